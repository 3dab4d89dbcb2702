//! The reconciler's errors. Each variant's name is the `error` label of
//! `streamkeeper_controller_reconcile_errors_total`.

/// Why a reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a call.
    #[error("kubernetes API: {0}")]
    Kube(#[source] Box<kube::Error>),
    /// The finalizer helper failed (adding or removing the finalizer, or its apply/cleanup).
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// This replica does not hold the leader Lease (any more): it writes nothing.
    #[error("not the leader")]
    NotLeader,
    /// The object has no namespace or name (a cluster-scoped copy?).
    #[error("object has no namespace or name")]
    Unnamed,
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Self::Kube(Box::new(e))
    }
}

impl Error {
    /// The variant's name, for metric labels.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "Kube",
            Self::Finalizer(_) => "Finalizer",
            Self::NotLeader => "NotLeader",
            Self::Unnamed => "Unnamed",
        }
    }
}

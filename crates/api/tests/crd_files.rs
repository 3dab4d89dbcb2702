//! The committed CRD files are exactly what `streamkeeper crdgen` prints.

use std::path::Path;

use streamkeeper_api::crd::{CRD_FILE, crd_yaml};

#[test]
fn committed_crds_match_crdgen() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let want = crd_yaml();
    for dir in ["crds", "charts/streamkeeper/crds"] {
        let path = root.join(dir).join(CRD_FILE);
        let have = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        assert!(
            have == want,
            "{dir}/{CRD_FILE} differs from `streamkeeper crdgen`; regenerate both with:\n  \
             cargo run -p streamkeeper -- crdgen > crds/{CRD_FILE} && \
             cp crds/{CRD_FILE} charts/streamkeeper/crds/{CRD_FILE}"
        );
    }
}

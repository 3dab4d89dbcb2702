//! Which streams a new config starts, restarts, removes or keeps: pure, so a reload's effect
//! is decided (and tested) apart from the tasks it stops and starts.

use std::collections::HashMap;

use streamkeeper_api::{StreamId, StreamSpec};

/// What an apply changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Streams started.
    pub started: Vec<StreamId>,
    /// Streams restarted because their spec changed.
    pub restarted: Vec<StreamId>,
    /// Streams stopped because they left the config.
    pub removed: Vec<StreamId>,
    /// Streams left running untouched.
    pub kept: usize,
}

/// The difference between the running streams and a new config.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConfigDiff {
    /// In the config, not running.
    pub start: Vec<StreamId>,
    /// Running with another spec: stop, then start with the new one.
    pub restart: Vec<StreamId>,
    /// Running, gone from the config.
    pub remove: Vec<StreamId>,
    /// Running with the same spec: untouched.
    pub keep: Vec<StreamId>,
}

impl ConfigDiff {
    /// Compares `running` streams (id and spec) with the `wanted` ones.
    pub fn new<'a>(
        running: impl IntoIterator<Item = (&'a StreamId, &'a StreamSpec)>,
        wanted: &[StreamSpec],
    ) -> Self {
        let want: HashMap<&StreamId, &StreamSpec> = wanted.iter().map(|s| (&s.id, s)).collect();
        let mut diff = Self::default();
        let mut seen = Vec::new();
        for (id, spec) in running {
            seen.push(id);
            match want.get(id) {
                Some(w) if *w == spec => diff.keep.push(id.clone()),
                Some(_) => diff.restart.push(id.clone()),
                None => diff.remove.push(id.clone()),
            }
        }
        diff.start = wanted
            .iter()
            .filter(|s| !seen.contains(&&s.id))
            .map(|s| s.id.clone())
            .collect();
        diff.restart.sort();
        diff.remove.sort();
        diff.keep.sort();
        diff
    }

    /// The specs to start now (new and restarted), in config order.
    pub fn to_run<'a>(&self, wanted: &'a [StreamSpec]) -> impl Iterator<Item = &'a StreamSpec> {
        let run: Vec<StreamId> = self.start.iter().chain(&self.restart).cloned().collect();
        wanted.iter().filter(move |s| run.contains(&s.id))
    }

    /// The summary the reload logs.
    pub fn applied(&self) -> Applied {
        Applied {
            started: self.start.clone(),
            restarted: self.restart.clone(),
            removed: self.remove.clone(),
            kept: self.keep.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use streamkeeper_api::SidecarConfig;

    use super::*;

    fn specs(yaml: &str) -> Vec<StreamSpec> {
        SidecarConfig::from_yaml(yaml)
            .expect("config")
            .config
            .streams
    }

    const BASE: &str = "
streams:
  - {id: cc/a, tenant: t, platform: generic, endpoints: {api: 'http://x', login: 'http://x', stream: 'ws://x/a'}, credentials: {dir: /c}}
  - {id: cc/b, tenant: t, platform: generic, endpoints: {api: 'http://x', login: 'http://x', stream: 'ws://x/b'}, credentials: {dir: /c}}
";

    #[test]
    fn unchanged_streams_are_kept_changed_restarted_missing_removed_new_started() {
        let before = specs(BASE);
        let running: Vec<(&StreamId, &StreamSpec)> = before.iter().map(|s| (&s.id, s)).collect();
        let after = specs(
            "
streams:
  - {id: cc/a, tenant: t, platform: generic, endpoints: {api: 'http://x', login: 'http://x', stream: 'ws://x/a'}, credentials: {dir: /c}}
  - {id: cc/c, tenant: t, platform: generic, endpoints: {api: 'http://x', login: 'http://x', stream: 'ws://x/c'}, credentials: {dir: /c}}
",
        );
        let diff = ConfigDiff::new(running.iter().copied(), &after);
        let id = |s: &str| -> StreamId { s.parse().expect("id") };
        assert_eq!(diff.keep, [id("cc/a")]);
        assert_eq!(diff.remove, [id("cc/b")]);
        assert_eq!(diff.start, [id("cc/c")]);
        assert!(diff.restart.is_empty());
        let mut changed = after.clone();
        changed[0].priority += 1;
        let diff = ConfigDiff::new(running.iter().copied(), &changed);
        assert_eq!(diff.restart, [id("cc/a")]);
        let run: Vec<&StreamId> = diff.to_run(&changed).map(|s| &s.id).collect();
        assert_eq!(run, [&id("cc/a"), &id("cc/c")]);
        assert_eq!(diff.applied().kept, 0);
    }
}

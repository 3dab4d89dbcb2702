//! Both binaries run on jemalloc with the options compiled into them (crates/cli/src/entry.rs):
//! jemalloc's `confirm_conf` makes it print every option it took, and from where, at start-up.

use std::process::Command;

fn options_taken(binary: &str) -> String {
    let out = Command::new(binary)
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", "confirm_conf:true")
        .output()
        .unwrap_or_else(|e| panic!("run {binary}: {e}"));
    assert!(out.status.success(), "{binary} --version failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn both_binaries_take_the_compiled_in_jemalloc_options() {
    for binary in [
        env!("CARGO_BIN_EXE_streamkeeper"),
        env!("CARGO_BIN_EXE_streamkeeper-sidecar"),
    ] {
        let said = options_taken(binary);
        let compiled_in = said
            .lines()
            .skip_while(|line| !line.contains("the global variable malloc_conf)"))
            .take_while(|line| !line.contains("environment variable"))
            .collect::<Vec<_>>()
            .join("\n");
        for option in [
            "narenas:1",
            "tcache:false",
            "dirty_decay_ms:0",
            "muzzy_decay_ms:0",
        ] {
            assert!(
                compiled_in.contains(&format!("Set conf value: {option}")),
                "{binary}: jemalloc did not take {option} from the binary:\n{said}"
            );
        }
    }
}

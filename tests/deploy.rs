//! The shipped systemd unit: accepted by `systemd-analyze verify` (when the
//! machine has it), and holding the settings the README promises.

use std::path::PathBuf;
use std::process::Command;

fn unit() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/distri-redirector.service");
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn the_unit_has_readiness_reload_and_a_sandbox() {
    let unit = unit();
    for want in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "Restart=on-failure",
        // sd_notify needs a Unix socket.
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        // The GeoIP copies on disk, not in a tmpfs /tmp.
        "Environment=TMPDIR=/var/tmp",
    ] {
        assert!(unit.lines().any(|l| l == want), "{want:?} missing");
    }
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: systemd-analyze is not installed here");
        return;
    }
    // verify checks that ExecStart's binary exists: point it at this build.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("distri-redirector.service");
    let text = unit().replace(
        "/usr/local/bin/distri-redirector",
        env!("CARGO_BIN_EXE_distri-redirector"),
    );
    std::fs::write(&path, text).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Warnings about our own unit are failures too; others' are not ours.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("distri-redirector.service"))
        .collect();
    assert!(ours.is_empty(), "{ours:#?}");
}

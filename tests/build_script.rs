//! build.rs: a missing external program the tests drive (SIPp, Redis, baresip, linphonec, sipsak) is
//! named in a `cargo:warning`, which `cargo build` / `cargo test` print; a present one is not.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const PROGRAMS: [&str; 5] = ["sipp", "redis-server", "baresip", "linphonec", "sipsak"];

fn warnings(script: &Path, path: &Path) -> Vec<String> {
    let out = Command::new(script)
        .env("PATH", path)
        .output()
        .expect("run build script");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("cargo:warning="))
        .filter(|l| l.contains("not found on PATH"))
        .map(str::to_string)
        .collect()
}

#[test]
fn build_script_warns_about_every_missing_test_program() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("sipshard-build-rs-{}", std::process::id()));
    let (empty, full) = (dir.join("empty"), dir.join("full"));
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::create_dir_all(&full).unwrap();
    let script = dir.join("build-script");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let st = Command::new(rustc)
        .args(["--edition", "2021", "--crate-type", "bin"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("build.rs"))
        .arg("-o")
        .arg(&script)
        .status()
        .expect("rustc");
    assert!(st.success());
    // Nothing on PATH: one warning per program, naming it and how to install it.
    let w = warnings(&script, &empty);
    assert_eq!(w.len(), PROGRAMS.len(), "{w:?}");
    for (p, line) in PROGRAMS.iter().zip(&w) {
        assert!(
            line.starts_with(&format!("{p} not found on PATH")),
            "{line}"
        );
        assert!(line.contains("apt-get install"), "{line}");
        assert!(line.contains("SIPSHARD_REQUIRE_"), "{line}");
    }
    // A file that is not executable does not count; an executable one does.
    for p in PROGRAMS {
        std::fs::write(full.join(p), "#!/bin/sh\n").unwrap();
    }
    assert_eq!(warnings(&script, &full).len(), PROGRAMS.len());
    for p in PROGRAMS {
        std::fs::set_permissions(full.join(p), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    assert_eq!(warnings(&script, &full), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(&dir);
}

//! The mesh-app and pause images that tests/harness/images.py builds for
//! registry-less nodes: complete in a chroot, imported by a real containerd,
//! and run by runc (`mesh-app serve` answers `mesh-app get`; pause exits on
//! SIGTERM). Needs root, like the netns tests, and containerd.

use std::path::Path;
use std::process::Command;

#[test]
fn images_py_builds_images_containerd_imports_and_runs() {
    let euid = Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    assert_eq!(euid, "0", "chroot and containerd need root: run this test as root (CI does)");
    for (tool, install) in [("containerd", "apt-get install containerd"), ("ctr", "apt-get install containerd"), ("gcc", "apt-get install gcc"), ("objcopy", "apt-get install binutils"), ("python3", "apt-get install python3")] {
        let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success());
        assert!(found, "{tool} is missing: {install}");
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_mesh-app"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../harness/images.py");
    let out = tempfile_dir();
    let run = Command::new("python3")
        .arg(&script)
        .args(["--out", &out, "--tag", "test", "--only", "mesh-app,pause", "--verify", "--verify-containerd", "--target-dir"])
        .arg(bin.parent().expect("the binary's directory"))
        .output()
        .expect("running images.py");
    let stderr = String::from_utf8_lossy(&run.stderr);
    let _ = std::fs::remove_dir_all(&out);
    assert!(run.status.success(), "images.py failed:\n{stderr}");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("revmesh.local/mesh-app:test ") && stdout.contains("revmesh.local/pause:3.2 "), "{stdout}");
    for done in ["mesh-app: verified in a chroot", "pause: verified in a chroot", "containerd imported all 2 references", "ran revmesh.local/mesh-app:test under containerd", "ran revmesh.local/pause:3.2 under containerd"] {
        assert!(stderr.contains(done), "missing {done:?}:\n{stderr}");
    }
}

fn tempfile_dir() -> String {
    let dir = std::env::temp_dir().join(format!("mesh-app-images-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.display().to_string()
}

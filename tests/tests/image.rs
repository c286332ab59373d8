//! The agent's image, really built (`cargo xtask image`'s code: podman from a debootstrapped
//! Debian, nothing from a registry but Debian's mirror) and run: `xlb --version` names this
//! build, `xlb check` passes on the examples it ships, and its entrypoint is what the DaemonSet
//! expects.

use std::{path::Path, process::Command};

use serde_json::Value;
use xlb_tests::{
    agent::xlb_bin,
    netns::{require_root, unique_tag},
};

#[test]
fn the_image_builds_from_debian_alone_and_runs_the_agent_binary() {
    require_root();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tag = format!("localhost/xlb-test:{}", unique_tag());
    let work = root.join("target/image");
    let archive = work.join("xlb-test.oci.tar");
    // Relative paths of the build (deploy/examples) are the workspace's.
    std::env::set_current_dir(&root).expect("workspace root");
    let opts = xtask::image::Options {
        bin: xlb_bin(),
        tag: tag.clone(),
        work,
        archive: archive.clone(),
    };
    let built = xtask::image::build(&opts);
    let cleanup = || {
        let _ = Command::new("podman").args(["rmi", "-f", &tag]).output();
        let _ = std::fs::remove_file(&archive);
    };
    if let Err(e) = built {
        cleanup();
        panic!("building the image: {e:#}");
    }
    let result = std::panic::catch_unwind(|| {
        // The archive is an OCI layout.
        let list = Command::new("tar")
            .arg("-tf")
            .arg(&archive)
            .output()
            .expect("tar");
        let names = String::from_utf8_lossy(&list.stdout);
        assert!(
            names
                .lines()
                .any(|l| l.trim_start_matches("./") == "oci-layout"),
            "{names}"
        );
        assert!(
            names
                .lines()
                .any(|l| l.trim_start_matches("./") == "index.json"),
            "{names}"
        );

        let (code, out, err) = xtask::image::run(&tag, &["--version"]).expect("podman run");
        assert_eq!(code, Some(0), "{err}");
        let (_, here, _) = {
            let o = Command::new(xlb_bin())
                .arg("--version")
                .output()
                .expect("xlb");
            (
                o.status.code(),
                String::from_utf8_lossy(&o.stdout).into_owned(),
                (),
            )
        };
        assert_eq!(out, here, "the image runs another build");

        let (code, out, err) =
            xtask::image::run(&tag, &["check", "/usr/share/xlb/examples/"]).expect("podman run");
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(
            out.contains("0 error(s), 0 warning(s)") && !out.contains("would program 0 service"),
            "{out}"
        );

        // bpftool is there for `kubectl exec ... bpftool map dump` (docs/maps.md).
        let inspect = Command::new("podman")
            .args(["image", "inspect", &tag])
            .output()
            .expect("inspect");
        let v: Value = serde_json::from_slice(&inspect.stdout).expect("inspect JSON");
        let config = &v[0]["Config"];
        assert_eq!(
            config["Entrypoint"],
            serde_json::json!(["/usr/local/bin/xlb"]),
            "{config}"
        );
        assert_eq!(
            config["Cmd"],
            serde_json::json!(["agent", "--in-cluster"]),
            "{config}"
        );
        let (code, _, err) = xtask::image::run_as(&tag, Some("/usr/sbin/bpftool"), &["version"])
            .expect("podman run bpftool");
        assert_eq!(code, Some(0), "{err}");
    });
    cleanup();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

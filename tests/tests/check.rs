//! `xlb check` run as users run it (the binary, a path): nothing is skipped silently (unknown
//! kinds, old apiVersions, IPv6 halves of dual-stack objects, subdirectories, other files,
//! dangling links, an empty result), warnings and errors have their own exit codes, `-o json`
//! gives structured problems, and hostile input (a FIFO, a device, a huge file, deep nesting) is
//! refused at once instead of hanging or eating memory; a zero conntrack capacity is one clear
//! flag error.

use std::{
    io::Read as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use xlb_tests::{agent::xlb_bin, files::WorkDir, netns::unique_tag};

/// `xlb check ARGS`, killed if it runs past `limit`: (exit code, stdout, stderr, time taken).
fn check_within(args: &[&str], path: &Path, limit: Duration) -> (i32, String, String, Duration) {
    let start = Instant::now();
    let mut child = Command::new(xlb_bin())
        .arg("check")
        .args(args)
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("xlb check");
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("xlb check {} still running after {limit:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = start.elapsed();
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code().unwrap_or(-1), out, err, took)
}

fn check(args: &[&str], path: &Path) -> (i32, String, String) {
    let (code, out, err, _) = check_within(args, path, Duration::from_secs(30));
    (code, out, err)
}

const GOOD: &str = "services:
  - name: web
    frontend: 192.0.2.10:80/tcp
    backends: [10.0.1.1:8080]
";

#[test]
fn what_is_not_read_is_a_warning_with_its_own_exit_code() {
    let dir = WorkDir::new(&format!("check-warn-{}", unique_tag()));
    dir.write("good.yaml", GOOD);
    let (code, out, err) = check(&[], &dir.path);
    assert_eq!((code, err.as_str()), (0, ""), "{out}");

    // A misspelt kind, an old apiVersion, an FQDN slice; a dual-stack Service is read whole.
    dir.write(
        "k8s.yaml",
        "apiVersion: v1
kind: Servce
metadata: {name: typo}
---
apiVersion: discovery.k8s.io/v1beta1
kind: EndpointSlice
metadata: {name: old}
---
apiVersion: v1
kind: Service
metadata: {name: dual, namespace: default}
spec:
  clusterIP: 10.96.0.20
  clusterIPs: [10.96.0.20, 'fd00::20']
  ipFamilies: [IPv4, IPv6]
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dual-v6, namespace: default, labels: {kubernetes.io/service-name: dual}}
addressType: IPv6
ports: [{port: 80}]
endpoints: [{addresses: ['fd00::1']}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dual-names, namespace: default, labels: {kubernetes.io/service-name: dual}}
addressType: FQDN
ports: [{port: 80}]
endpoints: [{addresses: ['web.example']}]
",
    );
    std::fs::create_dir(dir.path.join("old")).unwrap();
    dir.write("README.md", "notes");
    std::os::unix::fs::symlink(dir.path.join("gone.yaml"), dir.path.join("link.yaml")).unwrap();

    let (code, out, err) = check(&[], &dir.path);
    assert_eq!(code, 1, "a dangling link is an error:\n{out}{err}");
    for needle in [
        "warning: ",
        "k8s.yaml:1: Servce default/typo: kind \"Servce\" (v1) is not read",
        "k8s.yaml:5: EndpointSlice default/old: kind \"EndpointSlice\" (discovery.k8s.io/v1beta1) is not read",
        "EndpointSlice is read as apiVersion discovery.k8s.io/v1",
        "EndpointSlice default/dual-names: addressType: FQDN endpoints are not served",
        "old: subdirectory: not read",
        "README.md: not read: only *.yaml, *.yml and *.json files are",
        "error: ",
        "link.yaml: dangling link",
    ] {
        assert!(
            err.contains(needle),
            "{needle:?} missing from stderr:\n{err}"
        );
    }
    // Both halves of the dual-stack Service are programmed, and the compact one.
    assert!(out.contains("would program 3 service(s)"), "{out}");
    assert!(
        !err.contains("IPv6"),
        "IPv6 is served, not warned about:\n{err}"
    );

    // Without the error, only warnings: exit code 3 (a systemd ExecStartPre can tell them apart).
    std::fs::remove_file(dir.path.join("link.yaml")).unwrap();
    let (code, out, err) = check(&[], &dir.path);
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("0 error(s), 5 warning(s)"), "{out}{err}");

    // Nothing to program at all is said too.
    let empty = WorkDir::new(&format!("check-empty-{}", unique_tag()));
    let (code, _, err) = check(&[], &empty.path);
    assert_eq!(code, 3);
    assert!(err.contains("nothing to program"), "{err}");
}

#[test]
fn json_gives_every_problem_with_file_line_object_field_and_severity() {
    let dir = WorkDir::new(&format!("check-json-{}", unique_tag()));
    let bad = dir.write(
        "bad.yaml",
        "services:
  - name: web
    frontend: 192.0.2.10:80/tcpx
    algorithm: roundrobin
    backends:
      - {address: 10.0.1.2:8080, weight: 70000}
  - name: ok
    frontend: 192.0.2.11:80
    backends: [10.0.1.1:80]
",
    );
    let (code, out, err) = check(&["-o", "json"], &bad);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.is_empty(), "json output keeps stderr empty: {err}");
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["errors"], 3, "{v:#}");
    assert_eq!(v["warnings"], 0);
    assert_eq!(v["services"], 1, "the good entry is still programmed");
    let file = bad.display().to_string();
    let problems: Vec<(String, u64, String, String, String)> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["file"].as_str().unwrap().to_owned(),
                p["line"].as_u64().unwrap(),
                p["object"].as_str().unwrap().to_owned(),
                p["field"].as_str().unwrap().to_owned(),
                p["severity"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let e = |line, field: &str| {
        (
            file.clone(),
            line,
            "service web".to_owned(),
            field.to_owned(),
            "error".to_owned(),
        )
    };
    assert_eq!(
        problems,
        [
            e(3, "services[0].frontends[0]"),
            e(4, "services[0].algorithm"),
            e(6, "services[0].backends[0]"),
        ]
    );
    assert!(
        v["problems"][2]["message"]
            .as_str()
            .unwrap()
            .contains("from 1 to 65535, got 70000"),
        "{v:#}"
    );

    // A syntax error keeps its line and column.
    let syntax = dir.write("syntax.yaml", "services:\n  - name: web\n    frontend: [\n");
    let (code, out, _) = check(&["-o", "json"], &syntax);
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).expect("json");
    let p = &v["problems"][0];
    assert!(p["line"].as_u64().unwrap() >= 3, "{v:#}");
    assert!(p["message"].as_str().unwrap().contains("(column "), "{v:#}");
}

#[test]
fn hostile_input_is_refused_at_once() {
    let dir = WorkDir::new(&format!("check-hostile-{}", unique_tag()));
    let limit = Duration::from_secs(10);

    // A FIFO given as the path, and one inside a directory: never opened (that would block).
    let fifo = dir.path.join("pipe.yaml");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let (code, _, err, _) = check_within(&[], &fifo, limit);
    assert_eq!(code, 1);
    assert!(err.contains("not a regular file"), "{err}");
    dir.write("good.yaml", GOOD);
    let (code, out, err, _) = check_within(&[], &dir.path, limit);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("pipe.yaml: not a regular file (a FIFO or device): not read"),
        "{err}"
    );
    assert!(out.contains("would program 1 service(s)"), "{out}");

    // A device that never ends.
    let (code, _, err, _) = check_within(&[], Path::new("/dev/zero"), limit);
    assert_eq!(code, 1);
    assert!(err.contains("not a regular file"), "{err}");

    // A file over the size cap (sparse: no disk used), refused before it is read.
    let big = dir.path.join("sub-big.yaml");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(lb_userspace::source::files::MAX_FILE_BYTES + 1)
        .unwrap();
    let (code, _, err, _) = check_within(&[], &big, limit);
    assert_eq!(code, 1);
    assert!(err.contains("larger than the 64 MiB"), "{err}");

    // 200 KB of `[`: refused before the YAML parser sees it.
    let deep = dir.write("deep.yaml", &"[".repeat(200_000));
    let (code, _, err, took) = check_within(&[], &deep, limit);
    assert_eq!(code, 1);
    assert!(err.contains("nested deeper than 64 levels"), "{err}");
    // Not a timing target: a hang would trip `limit`; this only shows it in the log.
    println!("200 KB of '[' refused in {took:?}");

    // Brackets inside quotes and comments are text, not nesting.
    let quoted = dir.write(
        "quoted.yaml",
        &format!(
            "# {}\nservices:\n  - name: '{}'\n    frontend: 192.0.2.10:80\n    backends: [10.0.1.1:80]\n",
            "[".repeat(100),
            "[".repeat(100)
        ),
    );
    let (code, out, err, _) = check_within(&[], &quoted, limit);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn a_zero_conntrack_capacity_is_one_clear_error_before_anything_loads() {
    for flag in ["--ct-max", "--ct-new-max"] {
        let out = Command::new(xlb_bin())
            .args(["agent", flag, "0", "--bpffs", "/nonexistent/xlb-never-used"])
            .stdin(Stdio::null())
            .output()
            .expect("xlb agent");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains(&format!("invalid value '0' for '{flag}")) && err.contains("2.."),
            "{err}"
        );
        assert_eq!(
            err.lines().filter(|l| l.starts_with("error")).count(),
            1,
            "{err}"
        );
    }
}

#[test]
fn manifest_problems_point_at_the_field_and_conflicts_name_both_places() {
    let dir = WorkDir::new(&unique_tag());
    let compact = dir.write(
        "a.yaml",
        "services:\n  - name: web\n    frontend: 192.0.2.10:80/tcp\n    backends: [10.0.1.11:80]\n",
    );
    let manifests = dir.write(
        "b.yaml",
        "\
apiVersion: v1
kind: Service
metadata:
  name: web2
spec:
  clusterIP: 192.0.2.10
  ports:
    - name: http
      port: 80
      targetPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: bad
spec:
  clusterIP: 10.96.0.99
  ports:
    - name: http
      port: 80
    - name: other
      port: 99999
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web2-1
  labels:
    kubernetes.io/service-name: web2
addressType: IPv4
ports:
  - name: http
    port: 8080
endpoints:
  - addresses: [10.0.1.21]
  - addresses:
      - 10.0.1.300
      - 10.0.1.22
",
    );
    let (code, out, err) = check(&["-o", "json"], &dir.path);
    assert_eq!(code, 1, "{out}{err}");
    let v: Value = serde_json::from_str(&out).expect("json");
    let problems = v["problems"].as_array().expect("problems");
    let find = |needle: &str| -> &Value {
        problems
            .iter()
            .find(|p| p["message"].as_str().unwrap_or("").contains(needle))
            .unwrap_or_else(|| panic!("no problem with {needle:?}: {v:#}"))
    };
    let b = manifests.display().to_string();
    let a = compact.display().to_string();
    // The wrong port is on line 22 of b.yaml, in the second document.
    let port = find("99999");
    assert_eq!(
        (port["file"].as_str(), port["line"].as_u64()),
        (Some(b.as_str()), Some(22)),
        "{port}"
    );
    assert_eq!(port["field"], "spec.ports[1].port");
    // The bad address of the slice: line 37, the list item itself.
    let addr = find("10.0.1.300");
    assert_eq!(addr["line"], 37, "{addr}");
    assert_eq!(addr["field"], "endpoints[1].addresses[0]");
    // The duplicate VIP: reported at the entry that loses it, naming where the owner is.
    let clash = find("is already used by");
    assert_eq!(
        (clash["file"].as_str(), clash["line"].as_u64()),
        (Some(a.as_str()), Some(2)),
        "{clash}"
    );
    assert!(
        clash["message"]
            .as_str()
            .unwrap()
            .contains(&format!("({b}:1)")),
        "{clash}"
    );
}

#[test]
fn more_than_the_maps_hold_is_an_error_naming_the_flag() {
    let dir = WorkDir::new(&unique_tag());
    let file = dir.write(
        "s.yaml",
        "services:
  - {name: a, frontend: 192.0.2.10:80/tcp, backends: [10.0.1.1:80, 10.0.1.2:80]}
  - {name: b, frontend: 192.0.2.11:80/tcp, backends: [10.0.1.1:80]}
  - {name: c, frontend: 192.0.2.12:80/tcp, backends: [10.0.1.1:80]}
",
    );
    let (code, out, err) = check(&[], &file);
    assert_eq!(code, 0, "{out}{err}");
    for (flag, value, what) in [
        ("--max-frontends", "2", "3 frontends exceed the 2"),
        ("--max-backends", "3", "4 backends exceed the 3"),
        ("--max-services", "3", "3 services exceed the 2"),
    ] {
        let (code, out, err) = check(&[flag, value], &file);
        assert_eq!(code, 1, "{flag}: {out}{err}");
        assert!(
            err.contains(what) && err.contains(&format!("(raise {flag})")),
            "{flag}: {err}"
        );
    }
}

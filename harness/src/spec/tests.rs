use super::*;

struct Fixture {
    _dir: tempfile::TempDir,
    exp: Expansion,
    file: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    let payload = app.join("files/linux");
    std::fs::create_dir_all(&payload).unwrap();
    for f in ["root_part", "efi_part", "vmlinuz", "initrd.img"] {
        std::fs::write(payload.join(f), b"x").unwrap();
    }
    let exp = Expansion {
        payload_dir: payload.clone(),
        app_data_dir: app,
        phone_root: dir.path().join("phone"),
    };
    let file = payload.join("vm_config.json");
    Fixture {
        _dir: dir,
        exp,
        file,
    }
}

const GOOD: &str = r#"{
  "name": "debian",
  "disks": [{ "partitions": [
      { "label": "ROOT", "path": "$PAYLOAD_DIR/root_part", "writable": true,  "guid": "6d0e8c4e-9ef5-4d7b-a7c4-1b2a3c4d5e6f" },
      { "label": "EFI",  "path": "$PAYLOAD_DIR/efi_part",  "writable": false, "guid": "{0b9b7d70-4a43-4bb4-9d49-2c9b7e1d2f30}" } ],
    "writable": true }],
  "sharedPath": [ { "sharedPath": "/storage/emulated" }, { "sharedPath": "$APP_DATA_DIR/files" } ],
  "kernel": "$PAYLOAD_DIR/vmlinuz", "initrd": "$PAYLOAD_DIR/initrd.img", "params": "root=/dev/vda1",
  "protected": false, "cpu_topology": "match_host", "platform_version": "~1.0",
  "memory_mib": 4096, "debuggable": true, "console_out": true,
  "console_input_device": "ttyS0", "network": true, "auto_memory_balloon": true,
  "gpu": { "backend": "2d" },
  "connect_console": true, "boot_timeout_secs": 30
}"#;

fn parse(f: &Fixture, text: &str) -> Result<VmSpec, SpecError> {
    VmSpec::parse(text, &f.file, &f.exp)
}

fn bad(text: &str, field: &str, problem_has: &str) {
    let f = fixture();
    let e = parse(&f, text).expect_err("should be rejected");
    assert_eq!(e.file, f.file);
    assert_eq!(e.field, field, "{e}");
    assert!(e.problem.contains(problem_has), "{e}");
    // The message names the file and the field.
    let msg = e.to_string();
    assert!(
        msg.contains("vm_config.json") && msg.contains(field),
        "{msg}"
    );
}

fn edit(f: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
    f(&mut v);
    v.to_string()
}

#[test]
fn good_config_parses_and_expands() {
    let f = fixture();
    let s = parse(&f, GOOD).unwrap();
    assert_eq!(s.name, "debian");
    let root = s.partition("ROOT").unwrap();
    assert_eq!(root.path, f.exp.payload_dir.join("root_part"));
    assert!(root.writable);
    assert_eq!(
        s.partition("EFI").unwrap().guid.unwrap().to_string(),
        "0b9b7d70-4a43-4bb4-9d49-2c9b7e1d2f30"
    );
    let android = s.share(ShareTag::Android).unwrap();
    assert_eq!(android.host_dir, f.exp.phone_root.join("storage/emulated"));
    let internal = s.share(ShareTag::Internal).unwrap();
    assert_eq!(internal.host_dir, f.exp.app_data_dir.join("files"));
    assert_eq!(s.console_input, ConsoleDevice::TtyS0);
    assert_eq!(s.gpu_backend.as_deref(), Some("2d"));
    assert!(s.auto_memory_balloon && s.network);
    // Unknown fields survive.
    assert!(s.unknown_fields.contains_key("connect_console"));
    assert!(s.unknown_fields.contains_key("boot_timeout_secs"));
}

#[test]
fn partition_without_guid_and_no_kernel_is_accepted() {
    let f = fixture();
    let text = edit(|v| {
        let o = v.as_object_mut().unwrap();
        o.remove("kernel");
        o.remove("initrd");
        o.remove("params");
        v["disks"][0]["partitions"][1]
            .as_object_mut()
            .unwrap()
            .remove("guid");
        v["disks"][0]["partitions"][1]["label"] = "KERNEL_EXTRAS".into();
    });
    let s = parse(&f, &text).unwrap();
    assert!(s.kernel.is_none());
    assert!(s.partition("KERNEL_EXTRAS").unwrap().guid.is_none());
}

#[test]
fn bad_json() {
    bad("{ \"name\": \"debian\", ", "(document)", "invalid JSON");
}

#[test]
fn wrong_type() {
    bad(
        &edit(|v| v["memory_mib"] = "lots".into()),
        "memory_mib",
        "invalid type",
    );
}

#[test]
fn missing_partitions() {
    bad(
        &edit(|v| {
            v["disks"][0].as_object_mut().unwrap().remove("partitions");
        }),
        "disks[0].partitions",
        "missing",
    );
}

#[test]
fn empty_disks() {
    bad(
        &edit(|v| v["disks"] = serde_json::json!([])),
        "disks",
        "empty",
    );
}

#[test]
fn unknown_console_device() {
    bad(
        &edit(|v| v["console_input_device"] = "ttyUSB0".into()),
        "console_input_device",
        "unknown console device",
    );
}

#[test]
fn missing_partition_file() {
    bad(
        &edit(|v| v["disks"][0]["partitions"][0]["path"] = "$PAYLOAD_DIR/nope".into()),
        "disks[0].partitions[0].path",
        "No such file",
    );
}

#[test]
fn relative_partition_path() {
    bad(
        &edit(|v| v["disks"][0]["partitions"][0]["path"] = "root_part".into()),
        "disks[0].partitions[0].path",
        "relative path",
    );
}

#[test]
fn relative_share_path() {
    bad(
        &edit(|v| v["sharedPath"][0]["sharedPath"] = "storage".into()),
        "sharedPath[0].sharedPath",
        "relative path",
    );
}

#[test]
fn duplicate_share_tags() {
    bad(
        &edit(|v| v["sharedPath"][0]["sharedPath"] = "/data/other".into()),
        "sharedPath[1].sharedPath",
        "duplicate virtio-fs tag `internal`",
    );
}

#[test]
fn duplicate_labels() {
    bad(
        &edit(|v| v["disks"][0]["partitions"][1]["label"] = "ROOT".into()),
        "disks[0].partitions[1].label",
        "duplicate label",
    );
}

#[test]
fn unfilled_guid_placeholder() {
    bad(
        &edit(|v| v["disks"][0]["partitions"][0]["guid"] = "{root_part_guid}".into()),
        "disks[0].partitions[0].guid",
        "not a GUID",
    );
}

#[test]
fn duplicate_guids() {
    bad(
        &edit(|v| {
            v["disks"][0]["partitions"][1]["guid"] = "6d0e8c4e-9ef5-4d7b-a7c4-1b2a3c4d5e6f".into()
        }),
        "disks[0].partitions[1].guid",
        "duplicate GUID",
    );
}

#[test]
fn unknown_placeholder() {
    bad(
        &edit(|v| v["kernel"] = "$HOME/vmlinuz".into()),
        "kernel",
        "unknown placeholder `$HOME`",
    );
}

#[test]
fn initrd_without_kernel() {
    bad(
        &edit(|v| {
            v.as_object_mut().unwrap().remove("kernel");
        }),
        "initrd",
        "without `kernel`",
    );
}

#[test]
fn wrong_name() {
    bad(&edit(|v| v["name"] = "arch".into()), "name", "\"debian\"");
}

#[test]
fn unknown_cpu_topology() {
    bad(
        &edit(|v| v["cpu_topology"] = "all_of_them".into()),
        "cpu_topology",
        "unknown value",
    );
}

#[test]
fn memory_out_of_range() {
    bad(
        &edit(|v| v["memory_mib"] = 0.into()),
        "memory_mib",
        "out of range",
    );
}

#[test]
fn partition_path_is_a_directory() {
    bad(
        &edit(|v| v["disks"][0]["partitions"][0]["path"] = "$PAYLOAD_DIR".into()),
        "disks[0].partitions[0].path",
        "not a regular file",
    );
}

#[test]
fn missing_file() {
    let f = fixture();
    let e = VmSpec::load(&f.file, &f.exp).unwrap_err();
    assert_eq!(e.field, "(file)");
    assert!(e.to_string().contains("vm_config.json"));
}

#[test]
fn not_an_object() {
    bad("[1, 2]", "(document)", "invalid type");
}

/// The shared bad-input fixtures (fixtures/bad/vm_config-*.json) are all
/// rejected with an error naming the file.
#[test]
fn shared_bad_fixtures_are_rejected() {
    let f = fixture();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/bad");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if !(name.starts_with("vm_config") && name.ends_with(".json")) {
            continue;
        }
        n += 1;
        let err = VmSpec::load(&p, &f.exp).expect_err(&name);
        assert!(err.to_string().contains(&name), "{err}");
    }
    assert!(n >= 3, "expected the shared fixtures in {}", dir.display());
}

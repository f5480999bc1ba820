use super::*;
use crate::spec::{Expansion, VmSpec};

fn spec(dir: &Path, with_kernel: bool, console: &str) -> VmSpec {
    let payload = dir.join("app/files/linux");
    std::fs::create_dir_all(&payload).unwrap();
    for f in ["root_part", "efi_part", "vmlinuz", "initrd.img"] {
        std::fs::write(payload.join(f), b"x").unwrap();
    }
    let kernel = if with_kernel {
        r#""kernel": "$PAYLOAD_DIR/vmlinuz", "initrd": "$PAYLOAD_DIR/initrd.img", "params": "root=/dev/vda1 console=ttyS0","#
    } else {
        ""
    };
    let text = format!(
        r#"{{ "name": "debian", {kernel}
      "disks": [{{ "partitions": [
        {{ "label": "ROOT", "path": "$PAYLOAD_DIR/root_part", "writable": true, "guid": "6d0e8c4e-9ef5-4d7b-a7c4-1b2a3c4d5e6f" }},
        {{ "label": "EFI", "path": "$PAYLOAD_DIR/efi_part", "writable": false, "guid": "0b9b7d70-4a43-4bb4-9d49-2c9b7e1d2f30" }} ],
        "writable": true }}],
      "sharedPath": [ {{ "sharedPath": "/storage/emulated" }}, {{ "sharedPath": "$APP_DATA_DIR/files" }} ],
      "cpu_topology": "one_cpu", "memory_mib": 2048, "console_input_device": "{console}",
      "network": true, "auto_memory_balloon": true, "gpu": {{ "backend": "2d" }} }}"#
    );
    let exp = Expansion {
        payload_dir: payload.clone(),
        app_data_dir: dir.join("app"),
        phone_root: dir.join("phone"),
    };
    VmSpec::parse(&text, &payload.join("vm_config.json"), &exp).unwrap()
}

fn paths(dir: &Path) -> Paths {
    Paths {
        run: dir.join("run"),
        artefacts: dir.join("art"),
    }
}

fn line(p: &Plan) -> String {
    shell_line("qemu-system-aarch64", &p.qemu)
}

#[test]
fn direct_boot_profile() {
    let d = tempfile::tempdir().unwrap();
    let s = spec(d.path(), true, "ttyS0");
    let opts = Options {
        forwards: vec![Forward {
            udp: false,
            host_port: 40000,
            guest_port: 7681,
        }],
        ..Options::default()
    };
    let p = plan(&s, &opts, &paths(d.path()));
    let l = line(&p);
    assert_eq!(p.firmware, BootPath::Direct);
    assert_eq!(p.vcpus, 1, "one_cpu");
    for want in [
        "-cpu max,pauth-impdef=on",
        "-accel tcg,thread=multi",
        "-smp 1",
        "-m 2048M",
        "memory-backend-memfd,id=mem,size=2048M,share=on",
        "pci-serial,chardev=con",
        "virtconsole,chardev=hvc",
        "name=org.qemu.guest_agent.0",
        "vhost-user-fs-pci,chardev=fs0,tag=android",
        "vhost-user-fs-pci,chardev=fs1,tag=internal",
        "vhost-user-vsock-pci",
        "virtio-balloon-pci,id=balloon0,free-page-reporting=on",
        "virtio-gpu-pci",
        "hostfwd=tcp:127.0.0.1:40000-:7681",
        "-append 'root=/dev/vda1 console=ttyS0'",
        "-no-reboot",
    ] {
        assert!(l.contains(want), "missing {want:?} in {l}");
    }
    assert!(l.contains("\"driver\":\"nbd\""), "{l}");
    assert_eq!(p.nbd.len(), 1);
    let names: Vec<_> = p.sidecars.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "virtiofsd-android",
            "virtiofsd-internal",
            "vhost-device-vsock"
        ]
    );
    let vsock = &p.sidecars[2].args[1].to_string_lossy().to_string();
    assert!(vsock.starts_with("guest-cid=2048,"), "{vsock}");
    let android: Vec<String> = p.sidecars[0]
        .args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    assert!(
        android.contains(&"map:1000:10123:1".to_string()),
        "{android:?}"
    );
    assert!(
        android.contains(&"map:100:10123:1".to_string()),
        "{android:?}"
    );
}

#[test]
fn firmware_choices_without_kernel() {
    let d = tempfile::tempdir().unwrap();
    let s = spec(d.path(), false, "hvc0");
    let p = plan(&s, &Options::default(), &paths(d.path()));
    assert_eq!(p.firmware, BootPath::Uboot);
    let l = line(&p);
    assert!(l.contains(&format!("-bios {U_BOOT}")), "{l}");
    assert!(!l.contains("-kernel"));
    assert!(
        l.contains("virtconsole,chardev=con"),
        "hvc0 input console: {l}"
    );
    assert!(!l.contains("pci-serial"));
    let p = plan(
        &s,
        &Options {
            firmware: Firmware::Edk2,
            ..Options::default()
        },
        &paths(d.path()),
    );
    assert_eq!(p.firmware, BootPath::Edk2);
    assert!(line(&p).contains("if=pflash"));
}

#[test]
fn shell_line_quotes() {
    assert_eq!(
        shell_line("q", &[os("a b"), os("it's"), os("-x")]),
        "q 'a b' 'it'\\''s' -x"
    );
}

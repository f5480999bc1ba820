use std::path::Path;

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

fn launch(dir: &Path) -> Launch {
    Launch {
        index: 0,
        paths: Paths {
            run: dir.join("run"),
            artefacts: dir.join("art"),
        },
        netns: "avf-1-0".into(),
        subnet: 77,
    }
}

fn line(p: &Plan) -> String {
    p.qemu.shell_line()
}

#[test]
fn direct_boot_profile() {
    let d = tempfile::tempdir().unwrap();
    let s = spec(d.path(), true, "ttyS0");
    let p = plan(&s, &Options::default(), &launch(d.path())).unwrap();
    let l = line(&p);
    assert_eq!(p.firmware, BootPath::Direct);
    assert_eq!(p.vcpus, 1, "one_cpu");
    let art = d.path().join("art").display().to_string();
    for want in [
        "-cpu max,pauth-impdef=on,sve-max-vq=1,sme=off,pmu=off",
        "-accel tcg,thread=multi",
        "-smp 1",
        "-m 2048M",
        "memory-backend-memfd,id=mem,size=2048M,share=on",
        "pci-serial-2x,chardev1=con,chardev2=ser1",
        "logfile=[ART]/console.log,logappend=on",
        "file,id=hvc0,path=[ART]/console.log,append=on",
        "virtconsole,chardev=hvc0,bus=vser0.0",
        "null,id=hvc1",
        "file,id=hvc2,path=[ART]/hvc2.log",
        "virtio-multitouch-pci",
        "virtio-keyboard-pci",
        "virtio-mouse-pci",
        "virtio-sound-pci,audiodev=snd0",
        "virtio-gpu-pci,edid=on,xres=1280,yres=720",
        "name=org.qemu.guest_agent.0",
        "vhost-user-fs-pci,chardev=fs0,tag=android",
        "vhost-user-fs-pci,chardev=fs1,tag=internal",
        "vhost-user-vsock-pci",
        "virtio-balloon-pci,id=balloon0,free-page-reporting=on",
        "-append 'panic=-1 root=/dev/vda1 console=ttyS0 arm64.nompam 8250.nr_uarts=4 console=ttyS0 hostname=debian coherent_pool=4096'",
        "-no-reboot",
        "-machine virt,acpi=off,memory-backend=mem",
    ] {
        let want = want.replace("[ART]", &art);
        assert!(l.contains(&want), "missing {want:?} in {l}");
    }
    assert!(l.contains("\"driver\":\"nbd\""), "{l}");
    let fwd = format!("hostfwd=tcp:127.0.0.1:{}-:7681", p.forwards[0].host_port);
    assert!(l.contains(&fwd), "missing {fwd:?} in {l}");
    assert!(
        !l.contains("hostfwd=udp"),
        "no UDP forward: it delivers nothing"
    );
    assert_eq!(p.disks.len(), 1);
    assert_eq!(p.disks[0].partitions.len(), 2);
    assert_eq!(p.cid, CID_BASE);
    let names: Vec<_> = p.sidecars.iter().map(|s| s.process.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "virtiofsd-android",
            "virtiofsd-internal",
            "vhost-device-vsock"
        ]
    );
    let vsock = &p.sidecars[2].process.args[1].to_string_lossy().to_string();
    assert!(vsock.starts_with("guest-cid=2048,"), "{vsock}");
    let android: Vec<String> = p.sidecars[0]
        .process
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
    let p = plan(&s, &Options::default(), &launch(d.path())).unwrap();
    assert_eq!(p.firmware, BootPath::Uboot);
    assert!(p.prepare.is_empty());
    let l = line(&p);
    // No ACPI with U-Boot: the PL061 power key stays in the DT.
    assert!(
        l.contains("-machine virt,acpi=off,memory-backend=mem"),
        "{l}"
    );
    assert!(l.contains(&format!("-bios {U_BOOT}")), "{l}");
    assert!(!l.contains("-kernel"));
    assert!(
        l.contains("virtconsole,chardev=con"),
        "hvc0 input console: {l}"
    );
    assert!(
        !l.contains("chardev1=con"),
        "hvc0 is the input console: {l}"
    );
    assert_eq!(
        l.matches("virtio-multitouch-pci").count(),
        2,
        "touch + trackpad"
    );
    let p = plan(
        &s,
        &Options {
            firmware: Firmware::Edk2,
            ..Options::default()
        },
        &launch(d.path()),
    )
    .unwrap();
    assert_eq!(p.firmware, BootPath::Edk2);
    assert!(line(&p).contains("if=pflash"));
    assert!(line(&p).contains("-machine virt,memory-backend=mem"));
    // The plan, not the launcher, decides the private vars copy.
    assert_eq!(
        p.prepare,
        [Prepare {
            from: AAVMF_VARS.into(),
            to: d.path().join("run/AAVMF_VARS.fd")
        }]
    );
}

#[test]
fn shell_line_quotes() {
    assert_eq!(
        shell_line("q", &["a b".into(), "it's".into(), "-x".into()]),
        "q 'a b' 'it'\\''s' -x"
    );
}

#[test]
fn tap_mode_plans_dnsmasq_and_qemu_in_the_namespace() {
    let d = tempfile::tempdir().unwrap();
    let s = spec(d.path(), true, "ttyS0");
    let opts = Options {
        net: NetMode::Tap,
        ..Options::default()
    };
    let p = plan(&s, &opts, &launch(d.path())).unwrap();
    assert!(p.forwards.is_empty());
    let tap = p.tap.as_ref().expect("tap plan");
    assert_eq!(tap.host.to_string(), "192.168.77.1");
    let dnsmasq = p.sidecars.last().unwrap();
    assert_eq!(dnsmasq.process.name, "dnsmasq");
    assert_eq!(dnsmasq.ready, Ready::LogLine(crate::net::DNSMASQ_READY));
    assert_eq!(dnsmasq.process.netns, Some(tap.path()));
    assert_eq!(p.qemu.netns, Some(tap.path()));
    let commands = p.commands();
    let lines: Vec<&str> = commands.lines().collect();
    assert_eq!(lines.len(), 5, "{commands}");
    // dnsmasq through setpriv: unprivileged, PDEATHSIG kept.
    assert!(
        lines[3].starts_with("ip netns exec avf-1-0 setpriv --reuid=")
            && lines[3].contains(" -- dnsmasq --keep-in-foreground"),
        "{commands}"
    );
    assert!(lines[3].contains("--dhcp-range=192.168.77.100,192.168.77.199"));
    assert!(
        lines[4].starts_with("ip netns exec avf-1-0 qemu-system-aarch64 -nodefaults"),
        "{commands}"
    );
    assert!(line(&p).contains("tap,id=net0,ifname=avf0"));
}

/// The reproduction line must relaunch the same VM: every knob in
/// [`Options`] goes through `LaunchArgs` and comes back equal.
#[test]
fn repro_args_carry_every_launch_knob() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        launch: LaunchArgs,
    }
    let odd = Options {
        profile: avf_terminal::HostProfile::android16(),
        firmware: Firmware::Edk2,
        net: NetMode::Tap,
        vcpu: VcpuModel::NoPauth,
        vcpus: Some(1),
        memory_mib: Some(2048),
        deny_all_files_access: true,
        phone_storage_gib: Some(64),
        emulated_device: true,
        cidata_override: true,
        installed_build_id: Some("2133".into()),
    };
    for opts in [odd, Options::default()] {
        let argv = std::iter::once("x".into()).chain(opts.to_args());
        let back: Options = Cli::parse_from(argv).launch.into();
        assert_eq!(back, opts);
    }
    let d = tempfile::tempdir().unwrap();
    let s = spec(d.path(), true, "ttyS0");
    let opts = Options {
        memory_mib: Some(2048),
        vcpus: Some(1),
        ..Options::default()
    };
    let p = plan(&s, &opts, &launch(d.path())).unwrap();
    let line = shell_line("avf-harness boot", &p.repro_args);
    assert!(
        line.contains("--memory-mib 2048") && line.contains("--vcpus 1"),
        "{line}"
    );
}

/// Android 17's AIDL mode: `debian_server_port=0` after the payload's
/// parameters and nothing else of the app's; no gRPC port picked.
#[test]
fn aidl_mode_puts_port_zero_and_nothing_else_on_the_command_line() {
    let d = tempfile::tempdir().unwrap();
    let s = spec(d.path(), true, "ttyS0");
    let opts = Options {
        profile: avf_terminal::HostProfile::android17_aidl(),
        ..Options::default()
    };
    let p = plan(&s, &opts, &launch(d.path())).unwrap();
    assert_eq!(p.debian_server_port, Some(0));
    let l = line(&p);
    let append = l.split("-append ").nth(1).unwrap();
    // The app adds only the port; ds=nocloud is Google's config's.
    assert!(append.contains(" debian_server_port=0"), "{append}");
    assert!(!append.contains("ds=nocloud"), "{append}");
    let grpc = Options {
        profile: avf_terminal::HostProfile::android17_grpc(),
        ..Options::default()
    };
    let p = plan(&s, &grpc, &launch(d.path())).unwrap();
    assert!(p.debian_server_port.is_some_and(|port| port >= 20000));
    assert!(!line(&p).contains("ds=nocloud"));
}

#[test]
fn android17_apps_give_their_memory_setting_not_the_json_value() {
    let d = tempfile::tempdir().unwrap();
    let s = spec(d.path(), true, "ttyS0");
    let with = |profile: avf_terminal::HostProfile, memory_mib: Option<u64>| {
        let opts = Options {
            profile,
            memory_mib,
            ..Options::default()
        };
        plan(&s, &opts, &launch(d.path())).unwrap().memory_mib
    };
    // The json says 2048: Android 15 QPR2 and 16 take it ...
    assert_eq!(with(avf_terminal::HostProfile::android16(), None), 2048);
    assert_eq!(
        with(avf_terminal::HostProfile::android15_qpr2(), None),
        2048
    );
    // ... Android 17 replaces it with its setting, 1024 MiB until changed.
    for p in [
        avf_terminal::HostProfile::android17_grpc(),
        avf_terminal::HostProfile::android17_aidl(),
    ] {
        assert_eq!(with(p.clone(), None), 1024, "{}", p.name);
        assert_eq!(with(p, Some(3072)), 3072);
    }
    assert_eq!(
        with(avf_terminal::HostProfile::android16(), Some(3072)),
        3072
    );
}

#[test]
fn the_vcpu_model_is_the_phone_unless_asked_without_pauth() {
    let d = tempfile::tempdir().unwrap();
    let s = spec(d.path(), true, "ttyS0");
    let p = plan(&s, &Options::default(), &launch(d.path())).unwrap();
    assert!(line(&p).contains("-cpu max,pauth-impdef=on,sve-max-vq=1,sme=off,pmu=off"));
    let fast = Options {
        vcpu: VcpuModel::NoPauth,
        ..Options::default()
    };
    let p = plan(&s, &fast, &launch(d.path())).unwrap();
    assert!(line(&p).contains("-cpu max,pauth=off,sve-max-vq=1,sme=off,pmu=off"));
    assert!(shell_line("x", &p.repro_args).contains("--vcpu no-pauth"));
}

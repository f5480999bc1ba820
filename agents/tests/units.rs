//! The agents' systemd units (agents/systemd/): what their sandboxes must
//! say. Whether the agents still work inside them is the VM scenarios' job
//! (terminal_services: ports, forwarding, storage balloon).

fn unit(name: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("systemd")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn has(text: &str, line: &str) -> bool {
    text.lines().any(|l| l.trim() == line)
}

/// The balloon writes one sysfs attribute, under /sys/fs/ext4: the rest of
/// /sys and /proc/sys stays read-only for it.
#[test]
fn storage_balloon_agent_writes_only_ext4_tunables() {
    let u = unit("storage_balloon_agent.service");
    for want in [
        "ProtectKernelTunables=yes",
        "ReadWritePaths=/sys/fs/ext4",
        "ProtectSystem=strict",
        "RuntimeDirectory=storage_balloon_agent",
    ] {
        assert!(has(&u, want), "storage_balloon_agent.service lacks {want}");
    }
}

/// The launcher may switch its forwarders to nobody, and nothing more.
#[test]
fn launcher_may_only_drop_to_nobody() {
    let u = unit("forwarder_guest_launcher.service");
    assert!(has(
        &u,
        "CapabilityBoundingSet=CAP_SYS_PTRACE CAP_DAC_READ_SEARCH CAP_SETUID CAP_SETGID"
    ));
    let deny = u.find("SystemCallFilter=~@privileged").unwrap();
    let allow = u.find("SystemCallFilter=@setuid capset").unwrap();
    assert!(
        deny < allow,
        "the @setuid allowance must come after ~@privileged"
    );
    assert!(has(&u, "NoNewPrivileges=yes"));
}

/// debian_service runs in every mode and must not crash-loop outside the
/// AIDL mode: only a guest without vsock stops it for good.
#[test]
fn debian_service_runs_everywhere_vsock_exists() {
    let u = unit("debian_service.service");
    for want in [
        "ExecStart=/usr/bin/debian_service",
        "ConditionPathExists=/dev/vsock",
        "DeviceAllow=/dev/vsock rw",
        "RestartPreventExitStatus=78",
        "ReadWritePaths=/sys/fs/ext4",
        "RuntimeDirectory=debian_service",
    ] {
        assert!(has(&u, want), "debian_service.service lacks {want}");
    }
    assert!(
        !u.contains("debian_server_port"),
        "must not depend on the mode"
    );
}

/// The gRPC agents skip the AIDL mode's boots and never restart on its
/// `debian_server_port=0`.
#[test]
fn grpc_agents_skip_the_aidl_mode() {
    for name in [
        "forwarder_guest_launcher.service",
        "shutdown_runner.service",
        "storage_balloon_agent.service",
    ] {
        let u = unit(name);
        for want in [
            "ConditionKernelCommandLine=!debian_server_port=0",
            "RestartPreventExitStatus=78",
        ] {
            assert!(has(&u, want), "{name} lacks {want}");
        }
    }
}

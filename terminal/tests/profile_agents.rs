//! The image's agents must expect what the profile says the app gives: the
//! port flag and file in every gRPC agent's unit (agents/systemd).

use avf_terminal::profile::{HostProfile, Transport};

#[test]
fn agent_units_follow_the_android16_profile() {
    let p = HostProfile::android16();
    let Transport::GrpcPortFile { port_file, .. } = p.transport else {
        panic!("android16 hands the port over in a file")
    };
    assert!(p.agents.guest_port_file.ends_with(port_file));
    let units = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../agents/systemd");
    let want = format!("{} {}", p.agents.port_flag, p.agents.guest_port_file);
    let mut checked = 0;
    for agent in [
        "forwarder_guest_launcher",
        "shutdown_runner",
        "storage_balloon_agent",
    ] {
        let f = units.join(format!("{agent}.service"));
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let exec = text
            .lines()
            .find(|l| l.starts_with("ExecStart="))
            .unwrap_or_else(|| panic!("{}: no ExecStart", f.display()));
        assert!(exec.contains(&want), "{}: {exec} lacks {want}", f.display());
        checked += 1;
    }
    assert_eq!(checked, 3);
}

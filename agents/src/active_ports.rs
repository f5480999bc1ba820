//! AIDL mode's port reports: the app's `IVmActivePortListener` gets the
//! guest's listening TCP ports as `ActivePort{port, comm}`, in full when it
//! registers and again on every change. The ports and their filter are the
//! gRPC launcher's ([`crate::listeners::Watcher`]); what was sent feeds the
//! same [`ReportedPorts`] the forwarding check reads.
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use avf_aidl::com::android::virtualization::debian::aidl::{
    ActivePort::ActivePort, IVmActivePortListener::IVmActivePortListener,
};
use rsbinder::{StatusCode, Strong};

use crate::launcher::ReportedPorts;
use crate::listeners::{LastReport, Snapshot, Watcher};

pub type Listener = Strong<dyn IVmActivePortListener>;

/// A snapshot as the listener's argument.
pub fn to_active_ports(snapshot: &Snapshot) -> Vec<ActivePort> {
    snapshot
        .iter()
        .map(|(port, comm)| ActivePort {
            port: i32::from(*port),
            comm: comm.clone(),
        })
        .collect()
}

/// Polls the listeners every `interval` and reports to the newest listener
/// received on `listeners`; returns when every sender is gone. With no
/// listener (every mode but the AIDL one, or before the app connects) it
/// sleeps until one comes: a wakeup every `interval` for nothing.
pub fn report_loop(
    mut watcher: Watcher,
    listeners: Receiver<Listener>,
    interval: Duration,
    reported: ReportedPorts,
) {
    let mut listener: Option<Listener> = None;
    let mut last = LastReport::default();
    let mut last_error = String::new();
    loop {
        let next = match listener {
            Some(_) => listeners.recv_timeout(interval),
            None => listeners.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match next {
            Ok(l) => {
                eprintln!("port listener set: a full report follows");
                listener = Some(l);
                last.forget();
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let Some(l) = &listener else { continue };
        let now = match watcher.snapshot() {
            Ok(s) => s,
            Err(e) => {
                log_changed(&mut last_error, format!("listing listening sockets: {e:#}"));
                continue;
            }
        };
        if !last.due(&now) {
            continue;
        }
        reported.sending(&now);
        // Oneway: Ok means it left; the app cannot refuse a report here.
        let sent = l.reportActivePorts(&to_active_ports(&now));
        reported.answered(sent.is_ok());
        match sent {
            Ok(()) => {
                last.taken(now);
                last_error.clear();
            }
            Err(e) if e.transaction_error() == StatusCode::DeadObject => {
                eprintln!("the port listener is gone (its session ended); waiting for a new one");
                listener = None;
                last.forget();
            }
            // Not recorded as sent: tried again on the next poll.
            Err(e) => log_changed(&mut last_error, format!("reportActivePorts: {e}")),
        }
    }
}

/// Logs `msg` unless it repeats the previous one (no log flood while a
/// cause persists).
fn log_changed(last: &mut String, msg: String) {
    if *last != msg {
        eprintln!("{msg}");
        *last = msg;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_becomes_active_ports_in_port_order() {
        let s = Snapshot::from([(8080, "python3".into()), (3000, String::new())]);
        let v = to_active_ports(&s);
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].port, v[0].comm.as_str()), (3000, ""));
        assert_eq!((v[1].port, v[1].comm.as_str()), (8080, "python3"));
    }
}

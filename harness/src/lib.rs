//! arch-avf harness: boots an AVF Terminal payload in QEMU the way crosvm
//! does on the phone (contract §2–§3) and drives it.

pub mod app;
pub mod bench;
pub mod cidata;
pub mod console;
pub mod disk;
pub mod interactive;
pub mod net;
pub mod payload;
pub mod plan;
pub mod procs;
pub mod qmp;
pub mod scenario;
pub mod spec;
pub mod tcg;
pub mod timeouts;
pub mod vm;

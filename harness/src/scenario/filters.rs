//! Normalisation for golden snapshots: strip terminal noise, then replace
//! what changes from run to run (times, UUIDs, MACs, IPs, PIDs, sizes,
//! durations) with placeholders.

use regex::Regex;

/// (pattern, replacement), applied in order, line by line.
pub const FILTERS: &[(&str, &str)] = &[
    // The harness checks the id against the payload; goldens outlive builds.
    (r"AVF-BOOT-OK \S+", "AVF-BOOT-OK [BUILD_ID]"),
    // Kernel printk timestamps.
    (r"^\[\s*\d+\.\d+\]\s?", "[TIME] "),
    // Well-known GPT type GUIDs are the point of a partition golden: name
    // them before unique GUIDs are masked.
    (
        r"(?i)\b0fc63daf-8483-4772-8e79-3d69d8477de4\b",
        "type:linux-fs",
    ),
    (r"(?i)\bc12a7328-f81f-11d2-ba4b-00a0c93ec93b\b", "type:esp"),
    (
        r"(?i)\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b",
        "[UUID]",
    ),
    (r"(?i)\b[0-9a-f]{2}(:[0-9a-f]{2}){5}\b", "[MAC]"),
    (r"\b\d{1,3}(\.\d{1,3}){3}(/\d+)?\b", "[IP]"),
    // Addresses, not short IDs (PCI vendor/device/class stay readable).
    (r"(?i)\b0x[0-9a-f]{8,}\b", "[HEX]"),
    (r"\b\d+(\.\d+)?\s?(ns|us|µs|ms|s|sec|min)\b", "[DUR]"),
    (r"\b\d+(\.\d+)?\s?([KMGT]i?B|[KMGT])\b", "[SIZE]"),
    (r"\[\d+\]", "[PID]"),
    // Dates and clock times.
    (
        r"\b\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2})?)?\b",
        "[DATE]",
    ),
    (r"\b\d{2}:\d{2}:\d{2}\b", "[CLOCK]"),
];

/// Removes ANSI/VT escape sequences and carriage returns.
pub fn strip_terminal(s: &str) -> String {
    let esc = Regex::new(
        r"\x1b(\[[0-9;?!>]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[()][0-9A-B]|[=>78cDEHM])",
    )
    .expect("static regex");
    let s = esc.replace_all(s, "");
    s.chars()
        .filter(|&c| c != '\r' && (c == '\n' || c == '\t' || !c.is_control()))
        .collect()
}

pub struct Normaliser {
    rules: Vec<(Regex, &'static str)>,
    /// Where a kernel printk record starts.
    printk: Regex,
}

impl Default for Normaliser {
    fn default() -> Self {
        Normaliser {
            rules: FILTERS
                .iter()
                .map(|(p, r)| (Regex::new(&format!("(?m){p}")).expect("static regex"), *r))
                .collect(),
            printk: Regex::new(r"\[\s*\d+\.\d{6}\] ").expect("static regex"),
        }
    }
}

impl Normaliser {
    pub fn line(&self, l: &str) -> String {
        let mut s = l.trim_end().to_string();
        for (re, rep) in &self.rules {
            s = re.replace_all(&s, *rep).into_owned();
        }
        s
    }

    /// A console line with the kernel records that landed inside it (the
    /// kernel prints on the console while a unit's status line is still
    /// unterminated) split off: each record starts a line of its own.
    fn split_printk<'a>(&self, l: &'a str) -> impl Iterator<Item = &'a str> {
        let mut starts: Vec<usize> = self
            .printk
            .find_iter(l)
            .map(|m| m.start())
            .filter(|&i| i > 0)
            .collect();
        starts.insert(0, 0);
        starts.push(l.len());
        let pieces: Vec<&str> = starts.windows(2).map(|w| &l[w[0]..w[1]]).collect();
        pieces.into_iter()
    }

    /// Strips, splits off kernel records glued to a line, filters
    /// (keep/drop), normalises, and drops empty lines.
    pub fn text(&self, text: &str, keep: &[Regex], drop: &[Regex]) -> String {
        let clean = strip_terminal(text);
        let mut out = String::new();
        for l in clean.lines().flat_map(|l| self.split_printk(l)) {
            if l.trim().is_empty() {
                continue;
            }
            if !keep.is_empty() && !keep.iter().any(|r| r.is_match(l)) {
                continue;
            }
            if drop.iter().any(|r| r.is_match(l)) {
                continue;
            }
            out.push_str(&self.line(l));
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_run_specific_values() {
        let n = Normaliser::default();
        let t = "[    1.234567] virtio_net virtio1 enp0s2: MAC 52:54:00:a7:f0:01 ip 10.0.2.15/24\r\n\
                 \x1b[0;32m  OK  \x1b[0m] Mounted PARTUUID=6d0e8c4e-9ef5-4d7b-a7c4-1b2a3c4d5e6f in 23ms, 4.0 GiB, pid [345]\n\
                 \n\
                 racy line\n";
        let out = n.text(t, &[], &[Regex::new("racy").unwrap()]);
        assert_eq!(
            out,
            "[TIME] virtio_net virtio1 enp0s2: MAC [MAC] ip [IP]\n  OK  ] Mounted PARTUUID=[UUID] in [DUR], [SIZE], pid [PID]\n"
        );
    }

    /// Seen on a fresh-clone run: journald's kernel record printed before
    /// the status line's newline. The unit line stays whole and the record
    /// becomes a line of its own.
    #[test]
    fn a_kernel_record_glued_to_a_status_line_is_split_off() {
        let n = Normaliser::default();
        let t = "[  OK  ] Finished systemd-tmpfiles-setup-dev.service - Create Static Device Nodes in /dev gracefully.[    4.171502] systemd-journald[112]: Collecting audit messages is disabled.\n\
                 [  OK  ] Finished systemd-sysctl.service - Apply Kernel Variables.\n";
        let keep = [Regex::new(r"^\[  OK  \] ").unwrap()];
        assert_eq!(
            n.text(t, &keep, &[]),
            "[  OK  ] Finished systemd-tmpfiles-setup-dev.service - Create Static Device Nodes in /dev gracefully.\n\
             [  OK  ] Finished systemd-sysctl.service - Apply Kernel Variables.\n"
        );
        assert_eq!(
            n.text(t, &[], &[]).lines().nth(1),
            Some("[TIME] systemd-journald[PID]: Collecting audit messages is disabled.")
        );
    }

    #[test]
    fn names_gpt_types_but_masks_unique_guids() {
        let n = Normaliser::default();
        assert_eq!(
            n.line("vda1 0fc63daf-8483-4772-8e79-3d69d8477de4 ROOT ce80a8d8-ec53-446c-9764-90b6fd8661a5"),
            "vda1 type:linux-fs ROOT [UUID]"
        );
    }

    #[test]
    fn strips_queries() {
        assert_eq!(strip_terminal("a\x1b[6nb\x1b[!pc\x1b[?25hd"), "abcd");
    }
}

//! `ReportVmActivePortsRequest` as each release's app decodes it. Field 1
//! has two wire forms: Android 15 QPR2's app (late Java era,
//! `DebianServiceImpl.java`) reads `repeated int32 ports = 1`; Android 16's
//! (the Google build's `DebianServiceImpl`, `PortsStateManager`) and later
//! read `repeated ActivePort ports = 1`. No one encoding reads right in
//! both (docs/terminal-app.md §12), so the host keeps field 1 as it came
//! ([`RawPortReport`]) and the profile's [`PortReportForm`] reads it the
//! way that app's protobuf runtime would, garbage included: an image that
//! sends the wrong form is caught here as on the phone.

use prost::bytes::{Buf, BufMut};
use prost::encoding::{
    decode_varint, encode_key, encode_varint, encoded_len_varint, key_len, skip_field,
    DecodeContext, WireType,
};
use prost::{DecodeError, Message};

/// How an app reads `ReportVmActivePortsRequest.ports`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortReportForm {
    /// `repeated int32`: packed (length-delimited) and unpacked (varint)
    /// entries both accepted, as proto3 requires; each value truncated to
    /// 32 bits as Java's `int` does.
    Int32,
    /// `repeated ActivePort{int32 port = 1; string comm = 2}`: each
    /// length-delimited entry is a message; varint entries have the wrong
    /// wire type and protobuf-java keeps them as unknown fields (ignored).
    ActivePort,
}

/// One field-1 entry as it came over the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Varint(u64),
    Delimited(Vec<u8>),
}

/// The request with field 1 undecoded (the host's `extern_path` type for
/// `ReportVmActivePortsRequest`); everything else is skipped as unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawPortReport {
    pub entries: Vec<Entry>,
}

/// A reported port as the app read it: `comm` is empty in the int32 form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadPort {
    pub port: i32,
    pub comm: String,
}

/// `ActivePort`, decoded by prost from one entry.
#[derive(Clone, PartialEq, Message)]
struct ActivePortMsg {
    #[prost(int32, tag = "1")]
    port: i32,
    #[prost(string, tag = "2")]
    comm: String,
}

impl RawPortReport {
    /// The ports as an app of `form` reads them; an entry that app could
    /// not parse fails the whole request, as its parser throws.
    pub fn read(&self, form: PortReportForm) -> Result<Vec<ReadPort>, DecodeError> {
        let mut out = Vec::new();
        for e in &self.entries {
            match (form, e) {
                (PortReportForm::Int32, Entry::Varint(v)) => out.push(ReadPort {
                    port: *v as i32,
                    comm: String::new(),
                }),
                (PortReportForm::Int32, Entry::Delimited(b)) => {
                    let mut buf = &b[..];
                    while buf.has_remaining() {
                        out.push(ReadPort {
                            port: decode_varint(&mut buf)? as i32,
                            comm: String::new(),
                        });
                    }
                }
                (PortReportForm::ActivePort, Entry::Varint(_)) => {}
                (PortReportForm::ActivePort, Entry::Delimited(b)) => {
                    let m = ActivePortMsg::decode(&b[..])?;
                    out.push(ReadPort {
                        port: m.port,
                        comm: m.comm,
                    });
                }
            }
        }
        Ok(out)
    }
}

/// What an Android 16 guest sends (the `ActivePort` form).
impl From<Vec<crate::proto::ActivePort>> for RawPortReport {
    fn from(ports: Vec<crate::proto::ActivePort>) -> Self {
        RawPortReport {
            entries: ports
                .iter()
                .map(|p| Entry::Delimited(p.encode_to_vec()))
                .collect(),
        }
    }
}

impl Message for RawPortReport {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for e in &self.entries {
            match e {
                Entry::Varint(v) => {
                    encode_key(1, WireType::Varint, buf);
                    encode_varint(*v, buf);
                }
                Entry::Delimited(b) => {
                    encode_key(1, WireType::LengthDelimited, buf);
                    encode_varint(b.len() as u64, buf);
                    buf.put_slice(b);
                }
            }
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match (tag, wire_type) {
            (1, WireType::Varint) => self.entries.push(Entry::Varint(decode_varint(buf)?)),
            (1, WireType::LengthDelimited) => {
                let mut b = Vec::new();
                prost::encoding::bytes::merge(wire_type, &mut b, buf, ctx)?;
                self.entries.push(Entry::Delimited(b));
            }
            _ => skip_field(wire_type, tag, buf, ctx)?,
        }
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.entries
            .iter()
            .map(|e| match e {
                Entry::Varint(v) => key_len(1) + encoded_len_varint(*v),
                Entry::Delimited(b) => key_len(1) + encoded_len_varint(b.len() as u64) + b.len(),
            })
            .sum()
    }

    fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a guest sends, built with prost from the two schemas.
    #[derive(Clone, PartialEq, Message)]
    struct AsActivePorts {
        #[prost(message, repeated, tag = "1")]
        ports: Vec<ActivePortMsg>,
    }
    #[derive(Clone, PartialEq, Message)]
    struct AsPacked {
        #[prost(int32, repeated, tag = "1")]
        ports: Vec<i32>,
    }
    #[derive(Clone, PartialEq, Message)]
    struct AsUnpacked {
        #[prost(int32, repeated, packed = "false", tag = "1")]
        ports: Vec<i32>,
    }

    fn raw(bytes: Vec<u8>) -> RawPortReport {
        let r = RawPortReport::decode(&bytes[..]).unwrap();
        assert_eq!(r.encode_to_vec(), bytes, "re-encodes as it came");
        r
    }

    fn ports(r: &RawPortReport, f: PortReportForm) -> Vec<i32> {
        r.read(f).unwrap().into_iter().map(|p| p.port).collect()
    }

    #[test]
    fn each_app_reads_its_own_form() {
        let a = raw(AsActivePorts {
            ports: vec![ActivePortMsg {
                port: 8080,
                comm: "perl".into(),
            }],
        }
        .encode_to_vec());
        assert_eq!(
            a.read(PortReportForm::ActivePort).unwrap(),
            vec![ReadPort {
                port: 8080,
                comm: "perl".into()
            }]
        );
        let p = raw(AsPacked {
            ports: vec![8080, 3000],
        }
        .encode_to_vec());
        assert_eq!(ports(&p, PortReportForm::Int32), vec![8080, 3000]);
        let u = raw(AsUnpacked {
            ports: vec![8080, 3000],
        }
        .encode_to_vec());
        assert_eq!(ports(&u, PortReportForm::Int32), vec![8080, 3000]);
    }

    #[test]
    fn the_wrong_form_reads_as_garbage_or_nothing() {
        // ActivePort bytes read as packed int32: tags, lengths and the
        // comm's bytes become ports.
        let a = raw(AsActivePorts {
            ports: vec![ActivePortMsg {
                port: 8080,
                comm: "sh".into(),
            }],
        }
        .encode_to_vec());
        assert_eq!(
            ports(&a, PortReportForm::Int32),
            vec![8, 8080, 18, 2, b's' as i32, b'h' as i32]
        );
        // Unpacked int32 read by the ActivePort app: unknown fields.
        let u = raw(AsUnpacked { ports: vec![8080] }.encode_to_vec());
        assert_eq!(ports(&u, PortReportForm::ActivePort), Vec::<i32>::new());
        // Packed int32 read as messages: 8080's varint bytes are no
        // ActivePort (a parse error, as Java's would be) or a wrong one.
        let p = raw(AsPacked { ports: vec![8080] }.encode_to_vec());
        let r = p.read(PortReportForm::ActivePort);
        assert!(r.map(|v| v.iter().all(|x| x.port != 8080)).unwrap_or(true));
    }

    #[test]
    fn other_fields_are_skipped_and_truncation_is_javas() {
        let mut b = Vec::new();
        encode_key(7, WireType::Varint, &mut b);
        encode_varint(5, &mut b);
        encode_key(1, WireType::Varint, &mut b);
        encode_varint(0x1_0000_1F90, &mut b);
        let r = RawPortReport::decode(&b[..]).unwrap();
        assert_eq!(ports(&r, PortReportForm::Int32), vec![0x1F90]);
    }

    /// Fuzz: any bytes a guest sends decode or fail cleanly, and whatever
    /// decodes re-encodes as it came and reads in both forms without a
    /// panic; any entries encode, decode back equal and read likewise.
    #[test]
    fn fuzz_port_reports() {
        use crate::fuzzing::{proptest::prelude::*, run};
        let read_both = |r: &RawPortReport| {
            for form in [PortReportForm::Int32, PortReportForm::ActivePort] {
                if let Ok(ports) = r.read(form) {
                    if form == PortReportForm::Int32 {
                        assert!(ports.iter().all(|p| p.comm.is_empty()));
                    }
                }
            }
        };
        run(
            "wire::RawPortReport (bytes)",
            20_000,
            proptest::collection::vec(any::<u8>(), 0..256),
            |bytes| {
                if let Ok(r) = RawPortReport::decode(&bytes[..]) {
                    read_both(&r);
                    let again = RawPortReport::decode(&r.encode_to_vec()[..]).unwrap();
                    prop_assert_eq!(&again, &r);
                    prop_assert_eq!(r.encoded_len(), r.encode_to_vec().len());
                }
                Ok(())
            },
        );
        let entry = prop_oneof![
            any::<u64>().prop_map(Entry::Varint),
            proptest::collection::vec(any::<u8>(), 0..48).prop_map(Entry::Delimited),
        ];
        run(
            "wire::RawPortReport (entries)",
            10_000,
            proptest::collection::vec(entry, 0..12),
            |entries| {
                let r = RawPortReport { entries };
                let bytes = r.encode_to_vec();
                prop_assert_eq!(bytes.len(), r.encoded_len());
                prop_assert_eq!(&RawPortReport::decode(&bytes[..]).unwrap(), &r);
                read_both(&r);
                Ok(())
            },
        );
    }
}

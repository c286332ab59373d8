//! Field offsets of kernel structures, read from the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! The tracepoint programs read a few fields of `struct net_device` and `struct net`; Rust BPF
//! programs have no CO-RE relocations, so the loader hands them the offsets of this kernel.
//! Only what that needs is parsed: type headers (to walk the type section) and the members of
//! structs and unions.

use std::path::Path;

/// BTF could not be read, or lacks a field.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("no struct {0} in the kernel's BTF")]
    NoStruct(String),
    #[error("struct {strukt} has no field {field}")]
    NoField { strukt: String, field: String },
}

const BTF_MAGIC: u16 = 0xeb9f;

// BTF kinds (`BTF_KIND_*`).
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// A member of a struct or union.
#[derive(Clone, Copy)]
struct Member {
    name_off: u32,
    ty: u32,
    /// Offset in bits from the start of the aggregate.
    bit_off: u32,
}

/// One type: its kind, name, referenced type (for modifiers and typedefs) and members.
struct Type {
    kind: u32,
    name_off: u32,
    /// `size_or_type`: the referenced type of modifiers and typedefs.
    ty: u32,
    members: Vec<Member>,
}

/// The parsed type section and its strings.
pub struct Btf {
    /// Types by id (id 0 is `void`, kept as a placeholder).
    types: Vec<Type>,
    strings: Vec<u8>,
}

fn u32_at(data: &[u8], off: usize) -> Result<u32, BtfError> {
    data.get(off..off + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    /// The running kernel's BTF.
    pub fn from_kernel() -> Result<Self, BtfError> {
        Self::from_file(Path::new("/sys/kernel/btf/vmlinux"))
    }

    /// BTF in a file.
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    /// Parses raw (little-endian) BTF.
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != BTF_MAGIC {
            return Err(BtfError::Malformed("bad magic"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let types_at = hdr_len + type_off;
        let section = data
            .get(types_at..types_at + type_len)
            .ok_or(BtfError::Malformed("type section out of bounds"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();
        let mut types = vec![Type {
            kind: 0,
            name_off: 0,
            ty: 0,
            members: Vec::new(),
        }];
        let mut off = 0;
        while off < section.len() {
            let name_off = u32_at(section, off)?;
            let info = u32_at(section, off + 4)?;
            let ty = u32_at(section, off + 8)?;
            off += 12;
            let (kind, vlen, kflag) = ((info >> 24) & 0x1f, (info & 0xffff) as usize, info >> 31);
            let mut members = Vec::new();
            off += match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = off + i * 12;
                        let raw = u32_at(section, m + 8)?;
                        members.push(Member {
                            name_off: u32_at(section, m)?,
                            ty: u32_at(section, m + 4)?,
                            // With kind_flag the top 8 bits hold a bitfield's size.
                            bit_off: if kflag == 1 { raw & 0x00ff_ffff } else { raw },
                        });
                    }
                    vlen * 12
                }
                KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                _ => 0,
            };
            types.push(Type {
                kind,
                name_off,
                ty,
                members,
            });
        }
        Ok(Self { types, strings })
    }

    fn name(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or_default()
    }

    /// The type behind typedefs and modifiers.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.ty;
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Bit offset of `field` in `t`, looking into anonymous struct and union members.
    fn find(&self, t: &Type, field: &str, depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        for m in &t.members {
            let name = self.name(m.name_off);
            if name == field {
                return Some(m.bit_off);
            }
            if name.is_empty()
                && let Some(inner) = self.resolve(m.ty)
                && matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                && let Some(o) = self.find(inner, field, depth + 1)
            {
                return Some(m.bit_off + o);
            }
        }
        None
    }

    /// Byte offset of `field` in `struct strukt` (the first struct of that name).
    pub fn offset_of(&self, strukt: &str, field: &str) -> Result<u32, BtfError> {
        let t = self
            .types
            .iter()
            .find(|t| t.kind == KIND_STRUCT && self.name(t.name_off) == strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        let bits = self.find(t, field, 0).ok_or_else(|| BtfError::NoField {
            strukt: strukt.to_owned(),
            field: field.to_owned(),
        })?;
        Ok(bits / 8)
    }
}

/// The offsets the tracepoint programs need (see `lb-ebpf/src/device.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetdevOffsets {
    pub ifindex: u32,
    pub nd_net: u32,
    /// Of `ns.inum` in `struct net`.
    pub net_inum: u32,
}

impl NetdevOffsets {
    /// Reads them from `btf`.
    pub fn from_btf(btf: &Btf) -> Result<Self, BtfError> {
        Ok(Self {
            ifindex: btf.offset_of("net_device", "ifindex")?,
            // A `possible_net_t`, whose only field is the `struct net *`.
            nd_net: btf.offset_of("net_device", "nd_net")?,
            net_inum: btf.offset_of("net", "ns")? + btf.offset_of("ns_common", "inum")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny BTF blob: struct outer { int a; union { int x; int ifindex; }; int b; }.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0x\0ifindex\0b\0".to_vec();
        let s = |n: &str| {
            let pos = strings
                .windows(n.len() + 1)
                .position(|w| &w[..n.len()] == n.as_bytes() && w[n.len()] == 0)
                .unwrap();
            pos as u32
        };
        let mut types = Vec::new();
        let mut put = |v: u32| types.extend_from_slice(&v.to_le_bytes());
        // 1: int (4 bytes)
        put(s("int"));
        put(KIND_INT << 24);
        put(4);
        put(32);
        // 2: anonymous union { int x; int ifindex; }
        put(0);
        put((KIND_UNION << 24) | 2);
        put(4);
        for n in ["x", "ifindex"] {
            put(s(n));
            put(1);
            put(0);
        }
        // 3: struct outer { int a; union; int b; }
        put(s("outer"));
        put((KIND_STRUCT << 24) | 3);
        put(12);
        for (n, ty, bits) in [("a", 1, 0), ("", 2, 32), ("b", 1, 64)] {
            put(if n.is_empty() { 0 } else { s(n) });
            put(ty);
            put(bits);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for v in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&types);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn offsets_are_found_through_anonymous_members() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.offset_of("outer", "a").unwrap(), 0);
        assert_eq!(btf.offset_of("outer", "ifindex").unwrap(), 4);
        assert_eq!(btf.offset_of("outer", "b").unwrap(), 8);
        assert!(matches!(
            btf.offset_of("outer", "nope"),
            Err(BtfError::NoField { .. })
        ));
        assert!(matches!(
            btf.offset_of("inner", "a"),
            Err(BtfError::NoStruct(_))
        ));
        assert!(Btf::parse(b"not btf at all, clearly.").is_err());
    }

    #[test]
    fn the_running_kernel_has_the_fields_the_tracepoints_read() {
        // Every kernel xlb supports ships BTF; this machine's must give plausible offsets.
        let o = NetdevOffsets::from_btf(&Btf::from_kernel().unwrap()).unwrap();
        assert!(o.ifindex > 0 && o.ifindex < 4096, "{o:?}");
        assert!(o.nd_net > 0 && o.nd_net < 8192, "{o:?}");
        assert!(o.net_inum < 4096, "{o:?}");
    }
}

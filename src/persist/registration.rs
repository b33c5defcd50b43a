//! How a service registration is logged, and the bound a persistent registry puts on it.
//! (The registry itself, `src/registry.rs`, knows nothing of the log.)

use std::collections::BTreeMap;

use super::codec::wire::{self, Reader};
use super::{Codec, DecodeError, MAX_ENTRY_BYTES};
use crate::registry::{Registration, RegistryError};
use crate::{Error, Service};

/// A registration in the log: the service, then its deadline (ms since the Unix epoch).
impl Codec for Registration {
    fn encode(&self, out: &mut Vec<u8>) {
        let s = &self.service;
        wire::put_bytes(out, s.name.as_bytes());
        wire::put_bytes(out, s.address.as_bytes());
        out.extend_from_slice(&s.port.to_le_bytes());
        out.extend_from_slice(&(s.tags.len() as u32).to_le_bytes());
        for tag in &s.tags {
            wire::put_bytes(out, tag.as_bytes());
        }
        out.extend_from_slice(&(s.meta.len() as u32).to_le_bytes());
        for (k, v) in &s.meta {
            wire::put_bytes(out, k.as_bytes());
            wire::put_bytes(out, v.as_bytes());
        }
        wire::put_u64(out, self.deadline());
    }

    /// Counted, not encoded: `admit` measures every registration of a persistent registry,
    /// oversized ones included, before anything is written.
    fn encoded_len(&self) -> usize {
        let s = &self.service;
        let bytes = |b: &str| 4 + b.len();
        bytes(&s.name)
            + bytes(&s.address)
            + 2
            + 4
            + s.tags.iter().map(|t| bytes(t)).sum::<usize>()
            + 4
            + s.meta
                .iter()
                .map(|(k, v)| bytes(k) + bytes(v))
                .sum::<usize>()
            + 8
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let name = r.string()?;
        let address = r.string()?;
        let port = r.u16()?;
        let tags = (0..r.u32()?)
            .map(|_| r.string())
            .collect::<Result<Vec<_>, _>>()?;
        let meta = (0..r.u32()?)
            .map(|_| Ok((r.string()?, r.string()?)))
            .collect::<Result<BTreeMap<_, _>, DecodeError>>()?;
        let deadline = r.u64()?;
        r.finish()?;
        let service = Service {
            name,
            address,
            port,
            tags,
            meta,
        };
        Ok(Registration::restored(service, deadline))
    }
}

/// A persistent registry's check ([`crate::registry::Admit`]): a registration whose record
/// would not fit one log entry is refused before it is applied (it would fail the log, and
/// every later write with it).
pub(crate) fn admit(name: &str, registration: &Registration) -> Result<(), RegistryError> {
    let len = name.len() + registration.encoded_len();
    if len > MAX_ENTRY_BYTES {
        return Err(Error::EntryTooLarge {
            len,
            max: MAX_ENTRY_BYTES,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counted_length_is_the_encoded_one() {
        let service = Service {
            name: "web".into(),
            address: "10.0.0.1".into(),
            port: 80,
            tags: vec!["a".into(), String::new(), "ccc".into()],
            meta: [("zone".to_string(), "eu".to_string())].into(),
        };
        let r = Registration::restored(service, 42);
        let mut out = Vec::new();
        r.encode(&mut out);
        assert_eq!(r.encoded_len(), out.len());
    }
}

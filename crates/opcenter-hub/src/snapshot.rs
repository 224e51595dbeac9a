//! The subscribe snapshot's bytes, kept between subscribes: each unit and open
//! incident is encoded once per encoding and kept until it changes, and the two
//! arrays a console's snapshot is made of are kept whole until the next
//! committed batch, so the 20 supervisors of a re-subscribe loop get the same
//! bytes copied rather than the same objects encoded again.
//!
//! The reply around the arrays (`type`, `id`, `region`, `epoch`, `seq`,
//! `recovered`) is still encoded per subscribe with serde, with empty arrays;
//! the arrays are then put in place of those. The result is byte for byte what
//! serde makes of the whole reply (tested below for both encodings and both
//! reply kinds), so clients see no difference.
//!
//! Owns: the encoded objects and the last assembled arrays. Must never: serve
//! bytes of an object after the read model folded a change to it (every change
//! goes through [`SnapshotCache::changed_unit`] / [`SnapshotCache::changed_incident`],
//! and every change ends the assembled arrays' generation).

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

use opcenter_core::{Incident, Unit};
use opcenter_proto::{Encoding, codec};

use crate::frame::Prepared;

/// JSON: how a reply made with two empty arrays ends.
const JSON_EMPTY_TAIL: &[u8] = br#""incidents":[],"units":[]}"#;
/// MessagePack: how a reply made with two empty arrays ends (fixstr keys,
/// fixarray of length 0).
const MSGPACK_EMPTY_TAIL: &[u8] = b"\xa9incidents\x90\xa5units\x90";

/// One object's encodings (JSON, MessagePack), made on first use.
type Encoded = [Option<Bytes>; 2];

/// The two arrays of a console's snapshot, assembled at one generation.
struct Assembled {
    generation: u64,
    /// The subscription's `agencies` filter they were made for.
    agencies: Option<Vec<String>>,
    /// From the `incidents` key to the end of the reply.
    tail: Bytes,
}

/// Encoded units and incidents, and the last assembled arrays per encoding.
#[derive(Default)]
pub(crate) struct SnapshotCache {
    units: HashMap<String, Encoded>,
    incidents: HashMap<String, Encoded>,
    last: [Option<Assembled>; 2],
    /// Bumped by every change: assembled arrays of an older one are stale.
    generation: u64,
}

impl SnapshotCache {
    /// Unit `id` changed (its event, a position fix): its bytes are stale.
    pub(crate) fn changed_unit(&mut self, id: &str) {
        self.units.remove(id);
        self.generation += 1;
    }

    /// Incident `id` changed or was retired: its bytes are stale.
    pub(crate) fn changed_incident(&mut self, id: &str) {
        self.incidents.remove(id);
        self.generation += 1;
    }

    /// The reply frame to a console's subscribe: `envelope` is the reply with
    /// both arrays empty (`Some(vec![])`), `incidents` and `units` what goes in
    /// them, in order. `agencies` names the filter `units` went through (the
    /// key of the assembled arrays, with the generation). `None` only on a
    /// serializer bug (logged).
    pub(crate) fn reply<'a, E: Serialize>(
        &mut self,
        encoding: Encoding,
        envelope: &E,
        agencies: &Option<Vec<String>>,
        incidents: impl Iterator<Item = &'a Incident>,
        units: impl Iterator<Item = &'a Unit>,
    ) -> Option<Prepared> {
        let head = match codec::encode(encoding, envelope) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "could not encode a subscribe reply");
                return None;
            }
        };
        let empty = match encoding {
            Encoding::Json => JSON_EMPTY_TAIL,
            Encoding::MsgPack => MSGPACK_EMPTY_TAIL,
        };
        let Some(head) = head.strip_suffix(empty) else {
            tracing::error!("a subscribe reply does not end with its arrays");
            return None;
        };
        let slot = &mut self.last[encoding.index()];
        let fresh = slot
            .as_ref()
            .is_some_and(|a| a.generation == self.generation && a.agencies == *agencies);
        if !fresh {
            let capacity = slot.as_ref().map_or(4096, |a| a.tail.len() + a.tail.len() / 8);
            let tail = assemble(
                encoding,
                capacity,
                &mut self.incidents,
                &mut self.units,
                incidents,
                units,
            )?;
            *slot = Some(Assembled {
                generation: self.generation,
                agencies: agencies.clone(),
                tail,
            });
        }
        let tail = &slot.as_ref()?.tail;
        Some(Prepared::data(encoding, &[head, tail]))
    }
}

/// Appends the encoding of `value` to `out`, from `cache` or made and kept
/// there (an owned key is made only on a miss).
fn put_encoded<T: Serialize>(
    out: &mut BytesMut,
    cache: &mut HashMap<String, Encoded>,
    id: &str,
    encoding: Encoding,
    value: &T,
) -> Option<()> {
    let at = encoding.index();
    if let Some(bytes) = cache.get(id).and_then(|e| e[at].as_ref()) {
        out.put_slice(bytes);
        return Some(());
    }
    let bytes = codec::encode(encoding, value)
        .inspect_err(|e| tracing::error!(error = %e, "could not encode a snapshot object"))
        .ok()?;
    out.put_slice(&bytes);
    match cache.get_mut(id) {
        Some(e) => e[at] = Some(bytes),
        None => {
            let mut e = Encoded::default();
            e[at] = Some(bytes);
            cache.insert(id.to_owned(), e);
        }
    }
    Some(())
}

/// `"incidents":[…],"units":[…]}` (JSON) or the MessagePack keys and arrays;
/// `capacity` is a guess of its length (the last one's).
fn assemble<'a>(
    encoding: Encoding,
    capacity: usize,
    incident_cache: &mut HashMap<String, Encoded>,
    unit_cache: &mut HashMap<String, Encoded>,
    incidents: impl Iterator<Item = &'a Incident>,
    units: impl Iterator<Item = &'a Unit>,
) -> Option<Bytes> {
    let incidents: Vec<&Incident> = incidents.collect();
    let units: Vec<&Unit> = units.collect();
    let mut out = BytesMut::with_capacity(capacity);
    put_array(
        &mut out,
        encoding,
        "incidents",
        &incidents,
        |i| &i.id,
        incident_cache,
    )?;
    if encoding == Encoding::Json {
        out.put_u8(b',');
    }
    put_array(&mut out, encoding, "units", &units, |u| &u.id, unit_cache)?;
    if encoding == Encoding::Json {
        out.put_u8(b'}');
    }
    Some(out.freeze())
}

/// `"key":[…]` (JSON) or the MessagePack key (a fixstr: `key` is under 32
/// bytes) and array of `items`.
fn put_array<T: Serialize>(
    out: &mut BytesMut,
    encoding: Encoding,
    key: &str,
    items: &[&T],
    id: impl Fn(&T) -> &str,
    cache: &mut HashMap<String, Encoded>,
) -> Option<()> {
    let json = encoding == Encoding::Json;
    if json {
        out.put_u8(b'"');
        out.put_slice(key.as_bytes());
        out.put_slice(b"\":[");
    } else {
        out.put_u8(0xa0 | key.len() as u8);
        out.put_slice(key.as_bytes());
        msgpack_array_len(out, items.len());
    }
    for (n, item) in items.iter().enumerate() {
        if json && n > 0 {
            out.put_u8(b',');
        }
        put_encoded(out, cache, id(item), encoding, item)?;
    }
    if json {
        out.put_u8(b']');
    }
    Some(())
}

/// A MessagePack array header (fixarray, array 16, array 32), as rmp writes it.
fn msgpack_array_len(out: &mut BytesMut, len: usize) {
    match len {
        0..=15 => out.put_u8(0x90 | len as u8),
        16..=0xFFFF => {
            out.put_u8(0xdc);
            out.put_u16(len as u16);
        }
        _ => {
            out.put_u8(0xdd);
            // An array over u32::MAX objects cannot be in memory here.
            out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opcenter_core::Location;
    use opcenter_proto::server::{OkReply, SubscribeOk, Subscribed};

    fn unit(n: usize) -> Unit {
        let mut u = Unit::new(format!("u-{n}"));
        u.callsign = Some(format!("A-{n} \"é\""));
        u.location = Some(Location {
            lat: 48.1 + n as f64 * 1e-4,
            lon: 11.5,
        });
        u.speed = Some(n as f64 / 3.0);
        u
    }

    fn incident(n: usize) -> Incident {
        let mut i: Incident = serde_json::from_value(serde_json::json!({
            "id": format!("inc-{n}"), "category": "fire", "priority": 1, "status": "pending",
            "location": {"lat": 48.0, "lon": 11.0}, "source": "call", "units": ["u-1"],
            "required": [], "units_needed": 1, "notes": [], "possible_duplicates": [],
            "dispatch": "auto", "agencies": ["police"], "kinds": [], "declined_by": [],
            "created_ms": 1_000, "updated_ms": 1_000 + n as i64,
        }))
        .expect("incident json");
        i.description = Some(format!("line\n{n} \u{1F6A8}"));
        i
    }

    fn body<'a>(incidents: Vec<&'a Incident>, units: Vec<&'a Unit>) -> SubscribeOk<'a> {
        SubscribeOk {
            epoch: "ep",
            seq: 42,
            recovered: false,
            incidents: Some(incidents),
            units: Some(units),
        }
    }

    fn payload(p: &Prepared) -> Vec<u8> {
        p.payload().to_vec()
    }

    /// What serde makes of the whole reply, as the read model sent it before.
    fn whole<T: Serialize>(encoding: Encoding, value: &T) -> Vec<u8> {
        payload(&Prepared::of(&crate::wire::message(encoding, value).unwrap()))
    }

    #[test]
    fn the_assembled_reply_is_what_serde_makes_of_it() {
        // 0, 1, 15, 16 and 70 000 objects: every array header form.
        for (ni, nu) in [(0, 0), (1, 1), (15, 16), (16, 15), (3, 70_000)] {
            let incs: Vec<Incident> = (0..ni).map(incident).collect();
            let units: Vec<Unit> = (0..nu).map(unit).collect();
            for encoding in Encoding::ALL {
                // Every id form on the small sets; one on the 70 000 (slow in debug).
                let ids = [None, Some(0), Some(7), Some(300), Some(u64::MAX)];
                for id in if nu > 100 { &ids[2..3] } else { &ids[..] } {
                    let id = *id;
                    let mut cache = SnapshotCache::default();
                    let env = OkReply::new(id, body(vec![], vec![]));
                    let got = cache
                        .reply(encoding, &env, &None, incs.iter(), units.iter())
                        .unwrap();
                    let want = OkReply::new(id, body(incs.iter().collect(), units.iter().collect()));
                    assert_eq!(
                        payload(&got),
                        whole(encoding, &want),
                        "{encoding:?} {id:?} {ni}/{nu}"
                    );
                    // The multi-region reply, from the same cache (assembled arrays reused).
                    let env = Subscribed::new(id, "north", body(vec![], vec![]));
                    let got = cache
                        .reply(encoding, &env, &None, incs.iter(), units.iter())
                        .unwrap();
                    let want =
                        Subscribed::new(id, "north", body(incs.iter().collect(), units.iter().collect()));
                    assert_eq!(
                        payload(&got),
                        whole(encoding, &want),
                        "{encoding:?} {id:?} region"
                    );
                    // The frame kind: text for JSON, binary for MessagePack.
                    let kind = got.as_bytes()[0] & 0x0f;
                    assert_eq!(kind, if encoding == Encoding::Json { 1 } else { 2 });
                }
            }
        }
    }

    #[test]
    fn a_change_is_seen_by_the_next_reply_and_nothing_else_is_reencoded() {
        let mut units: Vec<Unit> = (0..3).map(unit).collect();
        let incs: Vec<Incident> = (0..2).map(incident).collect();
        let mut cache = SnapshotCache::default();
        let env = OkReply::new(Some(1), body(vec![], vec![]));
        let first = cache
            .reply(Encoding::Json, &env, &None, incs.iter(), units.iter())
            .unwrap();
        let again = cache
            .reply(Encoding::Json, &env, &None, incs.iter(), units.iter())
            .unwrap();
        assert_eq!(first, again);
        // Without a change reported, the kept bytes are served (this shows the
        // cache is what answers, not a fresh encoding).
        units[1].callsign = Some("B-9".into());
        let stale = cache
            .reply(Encoding::Json, &env, &None, incs.iter(), units.iter())
            .unwrap();
        assert_eq!(stale, first);
        cache.changed_unit("u-1");
        let fresh = cache
            .reply(Encoding::Json, &env, &None, incs.iter(), units.iter())
            .unwrap();
        let want = OkReply::new(Some(1), body(incs.iter().collect(), units.iter().collect()));
        assert_eq!(payload(&fresh), whole(Encoding::Json, &want));
        assert!(String::from_utf8(payload(&fresh)).unwrap().contains("B-9"));
        // A different agencies filter is a different set: assembled again.
        let only: Vec<Unit> = units[..1].to_vec();
        let filtered = cache
            .reply(
                Encoding::Json,
                &env,
                &Some(vec!["x".into()]),
                incs.iter(),
                only.iter(),
            )
            .unwrap();
        let want = OkReply::new(Some(1), body(incs.iter().collect(), only.iter().collect()));
        assert_eq!(payload(&filtered), whole(Encoding::Json, &want));
    }
}

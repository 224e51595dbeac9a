//! Decoding of client frames in both encodings: every shape of bad input gets
//! the documented error code, and good frames decode to the checked command.

use opcenter_proto::{ClientMessage, Encoding, ErrorCode, decode_frame};
use serde_json::json;

fn json_frame(v: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap()
}

fn msgpack_frame(v: &serde_json::Value) -> Vec<u8> {
    rmp_serde::to_vec_named(v).unwrap()
}

fn err_code(enc: Encoding, bytes: &[u8]) -> (Option<u64>, ErrorCode) {
    let e = decode_frame(enc, bytes).expect_err("should fail");
    (e.id, e.code)
}

#[test]
fn create_decodes_with_defaults() {
    let f = decode_frame(
        Encoding::Json,
        &json_frame(
            json!({"type":"incident.create","id":7,"category":"theft","priority":2,
            "location":{"lat":51.23,"lon":51.37},"extra":"ignored"}),
        ),
    )
    .unwrap();
    assert_eq!(f.id, Some(7));
    let ClientMessage::IncidentCreate(n) = f.message else {
        panic!("{f:?}")
    };
    assert_eq!((n.priority, n.units_needed, n.source.as_str()), (2, 1, "call"));
}

#[test]
fn same_frame_in_msgpack() {
    let v = json!({"type":"incident.create","id":8,"category":"theft","priority":2,
        "location":{"lat":51.23,"lon":51.37}});
    let f = decode_frame(Encoding::MsgPack, &msgpack_frame(&v)).unwrap();
    assert_eq!(f.id, Some(8));
    assert!(matches!(f.message, ClientMessage::IncidentCreate(_)));
}

#[test]
fn garbage_is_bad_request_with_null_id() {
    assert_eq!(
        err_code(Encoding::Json, b"not json at all"),
        (None, ErrorCode::BadRequest)
    );
    assert_eq!(
        err_code(Encoding::Json, b"[1,2,3]"),
        (None, ErrorCode::BadRequest)
    );
    assert_eq!(
        err_code(Encoding::MsgPack, &[0xc1, 0xff, 0x00]),
        (None, ErrorCode::BadRequest)
    );
    // A msgpack array that would decode positionally into a struct.
    let arr = rmp_serde::to_vec(&("ping", 1)).unwrap();
    assert_eq!(err_code(Encoding::MsgPack, &arr), (None, ErrorCode::BadRequest));
}

#[test]
fn missing_type_and_unknown_type() {
    assert_eq!(
        err_code(Encoding::Json, &json_frame(json!({"id":3}))),
        (Some(3), ErrorCode::BadRequest)
    );
    assert_eq!(
        err_code(Encoding::Json, &json_frame(json!({"type":"teleport","id":4}))),
        (Some(4), ErrorCode::UnknownType)
    );
}

#[test]
fn out_of_range_values_are_bad_request() {
    let base = |p: serde_json::Value, lat: serde_json::Value| json!({"type":"incident.create","id":1,"category":"x","priority":p,"location":{"lat":lat,"lon":0.0}});
    for bad in [
        base(json!(0), json!(1.0)),
        base(json!(6), json!(1.0)),
        base(json!(2), json!(91.0)),
    ] {
        assert_eq!(
            err_code(Encoding::Json, &json_frame(bad)),
            (Some(1), ErrorCode::BadRequest)
        );
    }
    // Wrong type.
    let wrong = base(json!("high"), json!(1.0));
    assert_eq!(
        err_code(Encoding::Json, &json_frame(wrong)),
        (Some(1), ErrorCode::BadRequest)
    );
    // Empty category.
    let empty =
        json!({"type":"incident.create","id":2,"category":" ","priority":1,"location":{"lat":0.0,"lon":0.0}});
    assert_eq!(
        err_code(Encoding::Json, &json_frame(empty)),
        (Some(2), ErrorCode::BadRequest)
    );
}

#[test]
fn nan_in_msgpack_is_bad_request() {
    #[derive(serde::Serialize)]
    struct Pos {
        #[serde(rename = "type")]
        t: &'static str,
        id: u64,
        lat: f64,
        lon: f64,
    }
    let bytes = rmp_serde::to_vec_named(&Pos {
        t: "unit.position",
        id: 9,
        lat: f64::NAN,
        lon: 1.0,
    })
    .unwrap();
    assert_eq!(
        err_code(Encoding::MsgPack, &bytes),
        (Some(9), ErrorCode::BadRequest)
    );
}

#[test]
fn note_over_4096_bytes_is_bad_request() {
    let text = "é".repeat(2049); // 4098 bytes
    let f = json!({"type":"incident.note","id":5,"incident_id":"I-1","text":text});
    assert_eq!(
        err_code(Encoding::Json, &json_frame(f)),
        (Some(5), ErrorCode::BadRequest)
    );
}

#[test]
fn subscribe_checks_topics_and_area() {
    let ok = json!({"type":"subscribe","topics":["incidents","positions"],"area":{"south":51.0,"west":51.0,"north":52.0,"east":52.0}});
    assert!(decode_frame(Encoding::Json, &json_frame(ok)).is_ok());
    let bad = json!({"type":"subscribe","id":1,"topics":["weather"]});
    assert_eq!(
        err_code(Encoding::Json, &json_frame(bad)),
        (Some(1), ErrorCode::BadRequest)
    );
}

#[test]
fn a_desk_subscribe_names_regions_and_resumes_each() {
    let decode = |v: serde_json::Value| decode_frame(Encoding::MsgPack, &msgpack_frame(&v));
    let f = decode(
        json!({"type":"subscribe","id":3,"region":"akt","topics":["incidents"],
        "regions":["zko","akt","zko"],"since_by_region":{"akt":{"epoch":"E","seq":9}}}),
    )
    .unwrap();
    assert_eq!(
        f.region.as_deref(),
        Some("akt"),
        "a top-level region is the frame's"
    );
    let ClientMessage::Subscribe(sub) = f.message else {
        panic!("not a subscribe")
    };
    assert_eq!(sub.regions.unwrap(), ["zko", "akt"], "deduplicated, in order");
    assert_eq!(sub.since_by_region["akt"].seq, 9);
    assert!(sub.since.is_none());
    // Without regions nothing changes: no region, no per-region resume.
    let plain =
        decode(json!({"type":"subscribe","topics":["incidents"],"since":{"epoch":"E","seq":1}})).unwrap();
    assert_eq!(plain.region, None);
    let ClientMessage::Subscribe(sub) = plain.message else {
        panic!("not a subscribe")
    };
    assert!(sub.regions.is_none() && sub.since_by_region.is_empty());
    for bad in [
        json!({"type":"subscribe","id":1,"topics":["incidents"],"regions":[]}),
        json!({"type":"subscribe","id":1,"topics":["incidents"],"regions":[""]}),
        json!({"type":"subscribe","id":1,"topics":["incidents"],"since_by_region":{"zko":{"epoch":"E","seq":1}}}),
        json!({"type":"subscribe","id":1,"topics":["incidents"],"regions":["zko"],"since":{"epoch":"E","seq":1}}),
        json!({"type":"subscribe","id":1,"topics":["incidents"],"regions":["zko"],"since_by_region":{"akt":{"epoch":"E","seq":1}}}),
    ] {
        assert_eq!(
            err_code(Encoding::Json, &json_frame(bad.clone())),
            (Some(1), ErrorCode::BadRequest),
            "{bad}"
        );
    }
}

#[test]
fn id_must_be_unsigned_integer() {
    let f = json!({"type":"ping","id":-1});
    assert_eq!(
        err_code(Encoding::Json, &json_frame(f)),
        (None, ErrorCode::BadRequest)
    );
}

proptest::proptest! {
    /// Any bytes in either encoding decode to a command or an error, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
        for enc in Encoding::ALL {
            let _ = decode_frame(enc, &bytes);
        }
    }

    /// Maps with a known type and random field values never panic either.
    #[test]
    fn random_fields_never_panic(lat in proptest::num::f64::ANY, p in proptest::num::i64::ANY, s in ".{0,20}") {
        let v = json!({"type":"incident.create","id":1,"category":s,"priority":p,"location":{"lat":lat,"lon":0.5}});
        let _ = decode_frame(Encoding::MsgPack, &msgpack_frame(&v));
    }
}

#[test]
fn recommend_decodes_to_the_engine_query_with_exactly_one_target() {
    use opcenter_core::{MAX_RECOMMEND, RecommendTarget};
    let f = decode_frame(
        Encoding::Json,
        &json_frame(json!({"type":"incident.recommend","id":1,"incident_id":"I-000001"})),
    )
    .unwrap();
    let ClientMessage::IncidentRecommend(q) = f.message else {
        panic!("{f:?}")
    };
    assert_eq!(q.target, RecommendTarget::Incident("I-000001".into()));
    assert_eq!((q.count, q.required), (3, None));
    let loc = json!({"lat":51.23,"lon":51.37});
    for bad in [
        json!({"type":"incident.recommend","id":2}),
        json!({"type":"incident.recommend","id":2,"incident_id":"I-1","location":loc}),
        json!({"type":"incident.recommend","id":2,"location":loc,"count":0}),
        json!({"type":"incident.recommend","id":2,"location":loc,"count":MAX_RECOMMEND + 1}),
        json!({"type":"incident.recommend","id":2,"location":{"lat":91.0,"lon":0.0}}),
    ] {
        assert_eq!(
            err_code(Encoding::Json, &json_frame(bad.clone())),
            (Some(2), ErrorCode::BadRequest),
            "{bad}"
        );
    }
}

#[test]
fn units_needed_follows_the_engine_limit() {
    use opcenter_core::MAX_UNITS_NEEDED;
    let create = |n: i64| {
        json_frame(
            json!({"type":"incident.create","id":3,"category":"fire","priority":1,
            "location":{"lat":0.0,"lon":0.0},"units_needed":n}),
        )
    };
    let f = decode_frame(Encoding::Json, &create(i64::from(MAX_UNITS_NEEDED))).unwrap();
    let ClientMessage::IncidentCreate(n) = f.message else {
        panic!("{f:?}")
    };
    assert_eq!(n.units_needed, MAX_UNITS_NEEDED);
    for bad in [0, i64::from(MAX_UNITS_NEEDED) + 1, (1 << 32) + 1] {
        assert_eq!(
            err_code(Encoding::Json, &create(bad)),
            (Some(3), ErrorCode::BadRequest),
            "{bad}"
        );
    }
}

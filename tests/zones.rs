//! The region (issue 15) over real sockets: agencies from token claims, on
//! `incident.create` and `incident.recommend`, and the `agencies` filter of
//! `subscribe` for units and positions; posts kept within their radius.
//! Must never: assert on timing (only on what arrives, in seq order).

use serde_json::{Value, json};

use opcenter_proto::auth::{Claims, Role, mint_token};

use crate::common::*;

/// Two agencies, police by default; a fast position feed.
const REGION: &str = "[hub]\nposition_interval_ms = 20\n\
    [dispatch]\nagencies = [\"police\", \"national_guard\"]\ndefault_agencies = [\"police\"]\n";

fn agency_token(unit: &str, agency: &str) -> String {
    let mut c = Claims::unit(unit, now_s(), 3600);
    c.agency = Some(agency.to_string());
    mint_token(SECRET.as_bytes(), &c)
}

fn ids(list: &Value) -> Vec<String> {
    let mut v: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            u.as_str()
                .map_or_else(|| u["id"].as_str().unwrap().to_string(), str::to_string)
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn incidents_get_units_of_their_agencies_only() {
    let srv = TestServer::start(REGION).await;
    let host = srv.host();
    // The Guard unit is the nearest; police is 1.1 km off.
    let _ng = tablet_with(
        &host,
        Encoding::Json,
        &agency_token("NG-1", "national_guard"),
        51.2300,
        51.3700,
    )
    .await;
    let _pol = tablet_with(
        &host,
        Encoding::Msgpack,
        &agency_token("P-1", "police"),
        51.2400,
        51.3700,
    )
    .await;
    let (mut c, snap) = console(&host, Encoding::Json).await;
    let agency_of = |id: &str| {
        snap["units"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["id"] == id)
            .unwrap()["agency"]
            .clone()
    };
    assert_eq!(agency_of("NG-1"), "national_guard");
    assert_eq!(agency_of("P-1"), "police");

    let rec = c
        .request(
            json!({"type":"incident.recommend","location":{"lat":51.23,"lon":51.37},
                        "agencies":["national_guard","police"]}),
        )
        .await;
    assert_eq!(rec["type"], "ok", "{rec}");
    let order: Vec<&str> = rec["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["unit_id"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["NG-1", "P-1"]);
    let rec = c
        .request(json!({"type":"incident.recommend","location":{"lat":51.23,"lon":51.37}}))
        .await;
    assert_eq!(
        ids(&json!(
            rec["candidates"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["unit_id"].clone())
                .collect::<Vec<_>>()
        )),
        ["P-1"]
    );
    assert_eq!(rec["shortfall"], "no_units_available", "{rec}");

    // Default agencies: police, though the Guard is nearer.
    let ok = c
        .request(json!({"type":"incident.create","category":"theft","priority":3,
                        "location":{"lat":51.23,"lon":51.37}}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    assert_eq!(ok["incident"]["units"], json!(["P-1"]));
    assert_eq!(ok["incident"]["agencies"], json!(["police"]));
    // Asked for: the Guard.
    let ok = c
        .request(json!({"type":"incident.create","category":"riot","priority":2,
                        "location":{"lat":51.23,"lon":51.37},"agencies":["national_guard"]}))
        .await;
    assert_eq!(ok["incident"]["units"], json!(["NG-1"]), "{ok}");
    // Not configured: bad_request naming it.
    let err = c
        .request(json!({"type":"incident.create","category":"riot","priority":2,
                        "location":{"lat":51.23,"lon":51.37},"agencies":["army"]}))
        .await;
    assert_eq!(err["code"], "bad_request", "{err}");
    assert!(err["message"].as_str().unwrap().contains("army"), "{err}");
    let err = c
        .request(json!({"type":"incident.create","category":"riot","priority":2,
                        "location":{"lat":51.23,"lon":51.37},"agencies":[]}))
        .await;
    assert_eq!(err["code"], "bad_request", "{err}");
}

#[tokio::test]
async fn a_subscription_filtered_by_agency_sees_only_those_units_and_positions() {
    let srv = TestServer::start(REGION).await;
    let host = srv.host();
    let _early = tablet_with(
        &host,
        Encoding::Json,
        &agency_token("P-0", "police"),
        51.2300,
        51.3700,
    )
    .await;
    let (mut guard_desk, _) = Client::login(&host, Encoding::Msgpack, &token(Role::Supervisor, "s1")).await;
    let ok = guard_desk
        .request(json!({"type":"subscribe","topics":["units","positions"],"agencies":["national_guard"]}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    assert_eq!(ok["units"], json!([]), "the snapshot holds no police unit");
    // A police unit comes on first, then a Guard unit: events reach subscribers
    // in seq order, so if the police ones got through they would come first.
    let _pol = tablet_with(
        &host,
        Encoding::Json,
        &agency_token("P-1", "police"),
        51.2400,
        51.3700,
    )
    .await;
    let _ng = tablet_with(
        &host,
        Encoding::Json,
        &agency_token("NG-1", "national_guard"),
        51.2500,
        51.3700,
    )
    .await;
    let ev = guard_desk.event("units", None).await;
    assert_eq!(ev["unit"]["id"], "NG-1", "{ev}");
    let p = guard_desk.recv_until(|f| f["type"] == "positions").await;
    let who: Vec<&str> = p["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["unit_id"].as_str().unwrap())
        .collect();
    assert_eq!(who, ["NG-1"], "{p}");

    let err = guard_desk
        .request(json!({"type":"subscribe","topics":["units"],"agencies":[""]}))
        .await;
    assert_eq!(err["code"], "bad_request", "{err}");
    // Without a filter: everyone.
    let (_c, snap) = console(&host, Encoding::Json).await;
    assert_eq!(ids(&snap["units"]), ["NG-1", "P-0", "P-1"]);
}

#[tokio::test]
async fn a_modular_post_is_not_sent_across_town() {
    let extra = format!(
        "{REGION}post_radius_m = 500.0\n\
         [[roster]]\nid = \"MP-1\"\ncallsign = \"Modular post 1\"\nkind = \"modular_post\"\npost = 1\n\
         district = \"Central\"\nstatus = \"available\"\nlocation = {{ lat = 51.2300, lon = 51.3700 }}\n"
    );
    let srv = TestServer::start(&extra).await;
    let host = srv.host();
    let (_post, hello) = Client::login(&host, Encoding::Json, &unit_token("MP-1")).await;
    assert_eq!(hello["unit"]["post"], 1, "{hello}");
    assert_eq!(hello["unit"]["district"], "Central", "{hello}");
    // A patrol car 3.3 km north; the robbery is 1.1 km from the post.
    let _car = tablet(&host, Encoding::Json, "P-1", 51.2600, 51.3700).await;
    let (mut c, _) = console(&host, Encoding::Json).await;
    let ok = c
        .request(json!({"type":"incident.create","category":"robbery","priority":1,
                        "location":{"lat":51.2400,"lon":51.3700}}))
        .await;
    assert_eq!(ok["incident"]["units"], json!(["P-1"]), "{ok}");
    // Right by the post: the post goes.
    let ok = c
        .request(json!({"type":"incident.create","category":"theft","priority":3,
                        "location":{"lat":51.2310,"lon":51.3700}}))
        .await;
    assert_eq!(ok["incident"]["units"], json!(["MP-1"]), "{ok}");
}

#[tokio::test]
async fn an_incident_lies_in_its_district_and_beat_and_the_beat_unit_is_sent_saying_why() {
    let files = tempfile::tempdir().unwrap();
    let poly = |w: f64, s: f64, e: f64, n: f64| json!([[[w, s], [e, s], [e, n], [w, n], [w, s]]]);
    let districts = json!({"type":"FeatureCollection","features":[
        {"type":"Feature","properties":{"name":"Central"},
         "geometry":{"type":"Polygon","coordinates": poly(51.30, 51.20, 51.45, 51.30)}}]});
    let beats = json!({"type":"FeatureCollection","features":[
        {"type":"Feature","properties":{"name":"Central-1","district":"Central"},
         "geometry":{"type":"MultiPolygon","coordinates":[poly(51.36, 51.22, 51.38, 51.24)]}}]});
    let d = files.path().join("districts.geojson");
    let b = files.path().join("beats.geojson");
    std::fs::write(&d, districts.to_string()).unwrap();
    std::fs::write(&b, beats.to_string()).unwrap();
    let extra = format!(
        "{REGION}beat_preference_m = 1500.0\n\
         [[zones]]\nfile = {:?}\nkind = \"district\"\n\
         [[zones]]\nfile = {:?}\nkind = \"beat\"\n\
         [[roster]]\nid = \"BEAT-1\"\nbeat = \"Central-1\"\n",
        d.display().to_string(),
        b.display().to_string()
    );
    let srv = TestServer::start(&extra).await;
    let host = srv.host();
    // The beat car 2.2 km north of the incident, another car 1.1 km south.
    let mut beat_car = tablet(&host, Encoding::Json, "BEAT-1", 51.2500, 51.3700).await;
    let _other = tablet(&host, Encoding::Msgpack, "P-1", 51.2200, 51.3700).await;
    let (mut c, _) = console(&host, Encoding::Json).await;
    let ok = c
        .request(json!({"type":"incident.create","category":"theft","priority":3,
                        "location":{"lat":51.2300,"lon":51.3700}}))
        .await;
    let inc = &ok["incident"];
    assert_eq!(
        (inc["district"].as_str(), inc["beat"].as_str()),
        (Some("Central"), Some("Central-1")),
        "{ok}"
    );
    assert_eq!(inc["units"], json!(["BEAT-1"]), "{ok}");
    assert_eq!(inc["selection"], json!({"BEAT-1": "beat"}), "{ok}");
    let ev = beat_car.event("assignments", Some("assigned")).await;
    assert_eq!(ev["incident"]["selection"]["BEAT-1"], "beat", "{ev}");
    // Outside every zone: no district, no beat, the nearest goes.
    let ok = c
        .request(json!({"type":"incident.create","category":"theft","priority":3,
                        "location":{"lat":51.1000,"lon":51.3700}}))
        .await;
    assert!(ok["incident"].get("district").is_none(), "{ok}");
    assert_eq!(ok["incident"]["selection"], json!({"P-1": "nearest"}), "{ok}");
}

/// The example region of `opcenter demo --config config/uralsk.toml`: it loads,
/// places points in its districts and beats, and keeps modular posts home.
#[test]
fn the_uralsk_example_region_loads_and_places_incidents() {
    use opcenter_core::{Actor, Command, Engine, NewIncident, Reply, UnitProfile, zones::ZoneKind};

    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/uralsk.toml");
    let settings = opcenter_hub::Settings::load_with_env(Some(&path), false).unwrap();
    let cfg = &settings.engine;
    let count = |k: ZoneKind| cfg.zones.iter().filter(|z| z.kind == k).count();
    assert_eq!((count(ZoneKind::District), count(ZoneKind::Beat)), (5, 12));
    let kind = |k: &str| cfg.roster.iter().filter(|r| r.kind.as_deref() == Some(k)).count();
    assert_eq!((kind("modular_post"), kind("district_post")), (10, 5));
    assert!(
        cfg.roster
            .iter()
            .any(|r| r.agency.as_deref() == Some("national_guard"))
    );
    // Every roster unit's district is one of the zones, and so is its beat.
    for r in &cfg.roster {
        for z in [&r.district, &r.beat].into_iter().flatten() {
            assert!(cfg.zones.iter().any(|x| &x.id == z), "{}: unknown zone {z}", r.id);
        }
    }
    // The generated gazetteer (config/uralsk-addresses.csv): every street has
    // houses, in Cyrillic or Latin, and the market's building is beside its post.
    let g = settings.gazetteer.as_ref().expect("[gazetteer] file");
    assert!(g.len() > 10_000, "{}", g.len());
    let first = |q: &str| {
        g.lookup(q, 1)
            .first()
            .map(|m| m.address.clone())
            .unwrap_or_else(|| panic!("{q}"))
    };
    assert_eq!(first("пр. Абая 7").label(), "проспект Абая, 7");
    assert_eq!(first("abaia 7").label(), "проспект Абая, 7");
    assert_eq!(first("Заводская 14").label(), "улица Заводская, 14-16");
    assert_eq!(first("Курмангазы 12").label(), "проспект Курмангазы, 12");
    let market = first("центральный рынок");
    assert_eq!(market.building.as_deref(), Some("Центральный рынок"));
    let mut e = Engine::new(settings.engine.clone());
    // The central market's post comes on duty; a robbery 1.5 km away is not its.
    let me = Actor::unit("post", "POST-MARKET");
    let p = UnitProfile {
        id: "POST-MARKET".into(),
        ..UnitProfile::default()
    };
    e.apply(&me, Command::RegisterUnit(p), 1_764_300_000_000).unwrap();
    let st = Command::SetStatus {
        unit_id: "POST-MARKET".into(),
        status: opcenter_core::UnitStatus::Available,
    };
    e.apply(&me, st, 1_764_300_000_000).unwrap();
    let post = e.unit("POST-MARKET").unwrap().location.unwrap();
    assert!(post.distance_m(&market.location) < 300.0, "{market:?}");
    let far = opcenter_core::Location {
        lat: post.lat - 0.0135,
        lon: post.lon,
    };
    let near = opcenter_core::Location {
        lat: post.lat + 0.002,
        lon: post.lon,
    };
    let create = |e: &mut Engine, at| match e
        .apply(
            &Actor::dispatcher("d"),
            Command::CreateIncident(NewIncident::call("robbery", 1, at)),
            1_764_300_000_000,
        )
        .unwrap()
        .reply
    {
        Reply::Created { incident, .. } => incident,
        r => panic!("{r:?}"),
    };
    let i = create(&mut e, far);
    assert!(i.units.is_empty(), "{i:?}");
    assert_eq!(i.district.as_deref(), Some("Central"));
    let i = create(&mut e, near);
    assert_eq!(i.units, ["POST-MARKET"]);
    assert_eq!(
        (i.district.as_deref(), i.beat.as_deref()),
        (Some("Central"), Some("Central-4"))
    );
}

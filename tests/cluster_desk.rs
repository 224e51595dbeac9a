//! The national desk, end to end: three regions on one nats-server (`zko`, `akt`,
//! `ura`, each with its own `role = "engine"` process) and one desk hub
//! (`regions = ["zko", "akt", "ura"]`, a real `opcenter serve`). A priority 1
//! incident created in each region reaches one desk supervisor subscribed to
//! all three, each event tagged with its region; a desk supervisor that
//! disconnects and resumes with `since_by_region` gets every event of every
//! region once, none missing; a single-region client sees no change on the
//! wire; commands and HTTP reads on the desk go to the region they name.
//! Each test prints `SKIPPED` and returns when nats-server is not installed.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use opcenter_cluster::testing::NatsCluster;
use opcenter_proto::auth::Role;

use crate::common::*;

const REGIONS: [&str; 3] = ["zko", "akt", "ura"];

/// One nats-server, an engine per region and a desk over all of them.
struct Desk {
    nats: NatsCluster,
    _tmp: tempfile::TempDir,
    engines: Vec<BinServer>,
    desk: BinServer,
}

fn nats_list(urls: &str) -> String {
    let list: Vec<String> = urls.split(',').map(|u| format!("{u:?}")).collect();
    list.join(", ")
}

impl Desk {
    fn start() -> Option<Desk> {
        let nats = NatsCluster::start_or_skip(1)?;
        let tmp = tempfile::tempdir().unwrap();
        let urls = nats_list(&nats.urls());
        let engines = REGIONS
            .iter()
            .map(|r| {
                let toml = format!(
                    "[cluster]\nnats = [{urls}]\nregion = \"{r}\"\nrole = \"engine\"\nreplicas = 1\n"
                );
                BinServer::start(&tmp.path().join(format!("engine-{r}")), &toml)
            })
            .collect();
        let desk_toml = format!(
            "[cluster]\nnats = [{urls}]\nregions = [\"zko\", \"akt\", \"ura\"]\nrole = \"hub\"\nreplicas = 1\n"
        );
        let desk = BinServer::start(&tmp.path().join("desk"), &desk_toml);
        Some(Desk {
            nats,
            _tmp: tmp,
            engines,
            desk,
        })
    }

    /// The engine node of region `i` (it serves clients of its region too).
    fn engine(&self, i: usize) -> String {
        self.engines[i].host()
    }

    /// `rounds` P1 creates in each region: the last incident id of each.
    async fn create_in_each(&self, rounds: usize) -> BTreeMap<String, String> {
        let mut last = BTreeMap::new();
        for _ in 0..rounds {
            for (i, region) in REGIONS.iter().enumerate() {
                last.insert(region.to_string(), create_p1(&self.engine(i)).await);
            }
        }
        last
    }
}

/// Reads events into `seen` until each region's incident in `ids` was created.
async fn until_created(
    c: &mut DeskClient,
    seen: &mut BTreeMap<String, Vec<u64>>,
    ids: &BTreeMap<String, String>,
) {
    let mut reached = std::collections::BTreeSet::new();
    desk_events_until(c, seen, |region, f| {
        if f["change"] == "created" && f["incident"]["id"] == ids[region].as_str() {
            reached.insert(region.to_owned());
        }
        reached.len() == REGIONS.len()
    })
    .await;
}

/// Every record seq in `region`'s stream, read straight from JetStream.
async fn stream_seqs(urls: &str, region: &str) -> Vec<u64> {
    crate::cluster::region_stream_seqs(urls, region).await.1
}

/// A desk client and the frames it read ahead (events of a region that answered
/// while another had not yet).
struct DeskClient {
    c: Client,
    early: std::collections::VecDeque<Value>,
}

impl DeskClient {
    async fn recv(&mut self) -> Value {
        match self.early.pop_front() {
            Some(f) => f,
            None => self.c.recv().await,
        }
    }
}

/// A desk supervisor subscribed to every region (resuming `since` where given):
/// the client and each region's `subscribed` frame, by region.
async fn desk_supervisor(
    host: &str,
    since: &BTreeMap<String, (String, u64)>,
) -> (DeskClient, BTreeMap<String, Value>) {
    let (mut c, _) = Client::login(host, Encoding::Json, &token(Role::Supervisor, "s1")).await;
    let mut sub =
        json!({"type":"subscribe","id":7,"topics":["incidents","units","positions"],"regions":REGIONS});
    for (region, (epoch, seq)) in since {
        sub["since_by_region"][region] = json!({"epoch":epoch,"seq":seq});
    }
    c.send(sub).await;
    let mut replies = BTreeMap::new();
    let mut early = std::collections::VecDeque::new();
    while replies.len() < REGIONS.len() {
        let f = c.recv().await;
        assert_ne!(f["type"], "error", "{f}");
        if f["type"] == "event" {
            // Regions answer in any order; each region's events follow its own reply.
            let region = f["region"].as_str().unwrap_or_default();
            assert!(
                replies.contains_key(region),
                "an event before its region's subscribed: {f}"
            );
            early.push_back(f);
        } else if f["type"] == "subscribed" {
            assert_eq!(f["id"], 7, "{f}");
            let region = f["region"]
                .as_str()
                .expect("subscribed names its region")
                .to_owned();
            assert!(
                replies.insert(region, f).is_none(),
                "two subscribed for one region"
            );
        }
    }
    (DeskClient { c, early }, replies)
}

/// A P1 create in `region`'s engine node (a console there): the incident id.
async fn create_p1(host: &str) -> String {
    let (mut console, _) = console(host, Encoding::Json).await;
    let mut body = create(51.25, 51.35);
    body["priority"] = json!(1);
    let ok = console.request(body).await;
    assert_eq!(ok["type"], "ok", "{ok}");
    ok["incident"]["id"].as_str().unwrap().to_owned()
}

/// Reads events into `seen` (per region: each seq new and increasing) until
/// `done` holds for the last one.
async fn desk_events_until(
    c: &mut DeskClient,
    seen: &mut BTreeMap<String, Vec<u64>>,
    mut done: impl FnMut(&str, &Value) -> bool,
) {
    loop {
        let f = c.recv().await;
        if f["type"] != "event" {
            continue;
        }
        let region = f["region"]
            .as_str()
            .unwrap_or_else(|| panic!("an event without its region: {f}"));
        assert!(REGIONS.contains(&region), "{f}");
        let seq = f["seq"].as_u64().unwrap();
        let list = seen.entry(region.to_owned()).or_default();
        assert!(
            list.last().is_none_or(|&l| seq > l),
            "{region}: seq {seq} repeated or out of order after {list:?}"
        );
        list.push(seq);
        if done(region, &f) {
            return;
        }
    }
}

#[tokio::test]
async fn a_p1_incident_in_each_region_reaches_one_desk_supervisor() {
    let Some(desk) = Desk::start() else {
        return;
    };
    let (mut sup, subscribed) = desk_supervisor(&desk.desk.host(), &BTreeMap::new()).await;
    for (region, f) in &subscribed {
        assert_eq!(f["recovered"], false, "{f}");
        assert!(f["incidents"].is_array(), "a snapshot per region: {f}");
        assert!(
            f["epoch"].as_str().unwrap().contains(&format!("OPC_{region}")),
            "{f}"
        );
    }
    let mut wanted = BTreeMap::new();
    for (i, region) in REGIONS.iter().enumerate() {
        wanted.insert(region.to_string(), create_p1(&desk.engine(i)).await);
    }
    let mut seen = BTreeMap::new();
    let mut reached = BTreeMap::new();
    desk_events_until(&mut sup, &mut seen, |region, f| {
        if f["topic"] == "incidents"
            && f["change"] == "created"
            && f["incident"]["id"] == wanted[region].as_str()
        {
            assert_eq!(f["incident"]["priority"], 1, "{f}");
            reached.insert(region.to_owned(), f["seq"].as_u64().unwrap());
        }
        reached.len() == REGIONS.len()
    })
    .await;
    // Each event's seq is its own region's: the desk tags, never renumbers.
    for region in REGIONS {
        let seqs = stream_seqs(&desk.nats.urls(), region).await;
        assert!(
            seqs.contains(&reached[region]),
            "{region}: seq {} is not in its stream {seqs:?}",
            reached[region]
        );
    }

    // A dispatcher on the desk: a command names its region and lands there.
    let (mut d, _) = Client::login(&desk.desk.host(), Encoding::Json, &token(Role::Dispatcher, "d1")).await;
    let refused = d.request(create(51.2, 51.3)).await;
    assert_eq!(
        refused["type"], "error",
        "a desk must be told the region: {refused}"
    );
    assert_eq!(refused["code"], "bad_request", "{refused}");
    let unknown = d.request(json!({"region":"nowhere","type":"ping"})).await;
    assert_eq!(
        unknown["type"], "ok",
        "ping is answered by the session itself: {unknown}"
    );
    let mut body = create(51.21, 51.31);
    body["region"] = json!("nowhere");
    let refused = d.request(body).await;
    assert_eq!(refused["code"], "bad_request", "{refused}");
    let mut body = create(51.22, 51.32);
    body["region"] = json!("ura");
    let ok = d.request(body).await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let ura_id = ok["incident"]["id"].as_str().unwrap().to_owned();
    let f = sup
        .c
        .recv_until(|f| {
            f["type"] == "event" && f["incident"]["id"] == ura_id.as_str() && f["region"] == "ura"
        })
        .await;
    assert_eq!(f["change"], "created", "{f}");

    // A tablet of akt moves: its fix reaches the desk supervisor tagged with akt.
    let mut t = tablet(&desk.engine(1), Encoding::Json, "AKT-1", 51.25, 51.35).await;
    t.send(json!({"type":"unit.position","lat":51.2501,"lon":51.3501}))
        .await;
    let pos = sup
        .c
        .recv_until(|f| {
            f["type"] == "positions"
                && f["items"].as_array().is_some_and(|i| {
                    i.iter()
                        .any(|p| p["unit_id"] == "AKT-1" && p["lat"] == json!(51.2501))
                })
        })
        .await;
    assert_eq!(pos["region"], "akt", "{pos}");

    // HTTP reads on the desk name the region.
    let auth = token(Role::Dispatcher, "d1");
    let zko_id = &wanted["zko"];
    let (status, _) = http(
        desk.desk.addr,
        "GET",
        &format!("/v1/incidents/{zko_id}"),
        Some(&auth),
        None,
    )
    .await;
    assert_eq!(status, 400, "a desk's read must name its region");
    for (region, id) in &wanted {
        let path = format!("/v1/incidents/{id}?region={region}");
        let (status, body) = http(desk.desk.addr, "GET", &path, Some(&auth), None).await;
        assert_eq!(status, 200, "{path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["incident"]["priority"], 1, "{path}: {body}");
    }
    let (status, body) = http(
        desk.desk.addr,
        "GET",
        &format!("/v1/incidents/{ura_id}?region=ura"),
        Some(&auth),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_desk_supervisor_resumes_every_region_with_since_by_region() {
    let Some(desk) = Desk::start() else {
        return;
    };
    let (mut sup, subscribed) = desk_supervisor(&desk.desk.host(), &BTreeMap::new()).await;
    let cut: BTreeMap<String, (String, u64)> = subscribed
        .iter()
        .map(|(r, f)| {
            (
                r.clone(),
                (
                    f["epoch"].as_str().unwrap().to_owned(),
                    f["seq"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    // Two creates per region while connected, three while away, one after.
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let last_ids = desk.create_in_each(2).await;
    until_created(&mut sup, &mut seen, &last_ids).await;
    drop(sup);
    desk.create_in_each(3).await;
    let since: BTreeMap<String, (String, u64)> = REGIONS
        .iter()
        .map(|r| {
            let epoch = cut[*r].0.clone();
            let last = *seen[*r].last().unwrap();
            (r.to_string(), (epoch, last))
        })
        .collect();
    let (mut sup, subscribed) = desk_supervisor(&desk.desk.host(), &since).await;
    for (region, f) in &subscribed {
        assert_eq!(f["recovered"], true, "{region} resumed: {f}");
        assert!(f.get("incidents").is_none(), "a resume carries no snapshot: {f}");
    }
    let last_ids = desk.create_in_each(1).await;
    until_created(&mut sup, &mut seen, &last_ids).await;
    // Per region: every seq after the first cut, once, in order, exactly the stream's.
    for region in REGIONS {
        let first_cut = cut[region].1;
        let stream: Vec<u64> = stream_seqs(&desk.nats.urls(), region)
            .await
            .into_iter()
            .filter(|s| *s > first_cut && *s <= *seen[region].last().unwrap())
            .collect();
        assert_eq!(seen[region], stream, "{region}: lost or repeated events");
        assert!(seen[region].len() >= 6, "{region}: {:?}", seen[region]);
    }
}

#[tokio::test]
async fn a_single_region_subscribe_is_unchanged() {
    let Some(desk) = Desk::start() else {
        return;
    };
    let id = create_p1(&desk.engine(1)).await;
    // On akt's own node and on the desk naming akt: the same reply, no region anywhere.
    let mut replies = Vec::new();
    for (host, region) in [(desk.engine(1), None), (desk.desk.host(), Some("akt"))] {
        let (mut c, _) = Client::login(&host, Encoding::Json, &token(Role::Supervisor, "s1")).await;
        let mut sub = json!({"type":"subscribe","topics":["incidents","units"]});
        if let Some(r) = region {
            sub["region"] = json!(r);
        }
        let ok = c.request(sub).await;
        assert_eq!(ok["type"], "ok", "{ok}");
        assert!(ok.get("region").is_none(), "{ok}");
        assert!(
            ok["incidents"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["id"] == id.as_str()),
            "{ok}"
        );
        replies.push((c, ok));
    }
    assert_eq!(
        replies[0].1["epoch"], replies[1].1["epoch"],
        "one stream, one epoch"
    );
    let next = create_p1(&desk.engine(1)).await;
    let mut events = Vec::new();
    for (c, _) in &mut replies {
        let f = c
            .recv_until(|f| f["type"] == "event" && f["incident"]["id"] == next.as_str())
            .await;
        assert!(
            f.get("region").is_none(),
            "a single-region event is unchanged: {f}"
        );
        events.push(f);
    }
    assert_eq!(
        events[0], events[1],
        "the desk and the region's node send the same frame"
    );
    // The desk will not guess: a subscribe without `region` or `regions` is refused.
    let (mut c, _) = Client::login(&desk.desk.host(), Encoding::Json, &token(Role::Supervisor, "s1")).await;
    let refused = c
        .request(json!({"type":"subscribe","topics":["incidents"]}))
        .await;
    assert_eq!(refused["code"], "bad_request", "{refused}");
    // A region's own node serves no other region.
    let (mut c, _) = Client::login(&desk.engine(0), Encoding::Json, &token(Role::Supervisor, "s1")).await;
    let refused = c
        .request(json!({"type":"subscribe","topics":["incidents"],"regions":["zko","akt"]}))
        .await;
    assert_eq!(refused["code"], "bad_request", "{refused}");
}

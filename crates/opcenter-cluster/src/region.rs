//! A region's names on NATS and the creation of its JetStream streams. Owns the
//! naming scheme (`OPC_<region>` stream, `journal.<region>` subject, `OPC_<region>_snap`,
//! `OPC_<region>_lease` and `OPC_<region>_chain` KV buckets) and the "create the KV stream by hand" workaround for nats-server 2.9;
//! must never publish journal records.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

use crate::ClusterError;

/// The names one region uses on NATS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionNames {
    /// The region, e.g. `zko`.
    pub region: String,
    /// The journal stream, `OPC_<region>`.
    pub stream: String,
    /// The journal subject, `journal.<region>`.
    pub subject: String,
    /// The snapshot KV bucket, `OPC_<region>_snap` (its stream is `KV_OPC_<region>_snap`).
    pub snapshot_bucket: String,
    /// The engine lease KV bucket, `OPC_<region>_lease` (key = the region).
    pub lease_bucket: String,
    /// The audit chain's checkpoint KV bucket, `OPC_<region>_chain` (key `head`).
    pub chain_bucket: String,
}

impl RegionNames {
    /// Validates the region name (it goes into stream names, subjects and KV buckets).
    pub fn new(region: &str) -> Result<RegionNames, ClusterError> {
        let ok = !region.is_empty()
            && region.len() <= 64
            && region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(ClusterError::InvalidRegion(region.to_owned()));
        }
        Ok(RegionNames {
            region: region.to_owned(),
            stream: format!("OPC_{region}"),
            subject: format!("journal.{region}"),
            snapshot_bucket: format!("OPC_{region}_snap"),
            lease_bucket: format!("OPC_{region}_lease"),
            chain_bucket: format!("OPC_{region}_chain"),
        })
    }
}

/// Opens a stream, creating it with `config` if it does not exist. Two processes may
/// race to create it: the loser finds the winner's stream.
pub(crate) async fn open_or_create_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, ClusterError> {
    match js.get_stream(&config.name).await {
        Ok(s) => return Ok(s),
        Err(e)
            if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(je)
                if je.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) => {}
        Err(e) => return Err(ClusterError::nats("get stream")(e.into())),
    }
    let name = config.name.clone();
    match js.create_stream(config).await {
        Ok(s) => Ok(s),
        Err(create_err) => js
            .get_stream(&name)
            .await
            .map_err(|_| ClusterError::nats("create stream")(create_err.into())),
    }
}

/// The journal stream's configuration: file storage, `replicas` copies, no deletes of
/// single messages (only purges from the front by compaction), a 2-minute duplicate
/// window for `Nats-Msg-Id` (longer than any publish retry deadline).
pub(crate) fn journal_stream_config(names: &RegionNames, replicas: usize) -> stream::Config {
    stream::Config {
        name: names.stream.clone(),
        subjects: vec![names.subject.clone()],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        duplicate_window: Duration::from_secs(120),
        deny_delete: true,
        allow_direct: true,
        description: Some(format!("opcenter journal of region {}", names.region)),
        ..Default::default()
    }
}

/// Opens a KV bucket, creating its `KV_<bucket>` stream by hand if needed: on
/// nats-server 2.9 async-nats 0.51's `create_key_value` fails (it parses account-info
/// fields 2.9 does not send), while `get_key_value` on a stream configured the way
/// the KV layer expects works. `history` values kept per key; `max_age` expires
/// entries (a lease bucket uses the lease TTL here).
pub async fn open_kv_bucket(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
    history: i64,
    max_age: Duration,
) -> Result<kv::Store, ClusterError> {
    let config = stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: history.max(1),
        max_age,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        duplicate_window: if max_age.is_zero() || max_age > Duration::from_secs(120) {
            Duration::from_secs(120)
        } else {
            max_age
        },
        ..Default::default()
    };
    open_or_create_stream(js, config).await?;
    js.get_key_value(bucket)
        .await
        .map_err(|e| ClusterError::nats("open kv bucket")(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_names() {
        let n = RegionNames::new("zko").unwrap();
        assert_eq!(n.stream, "OPC_zko");
        assert_eq!(n.subject, "journal.zko");
        assert_eq!(n.snapshot_bucket, "OPC_zko_snap");
        assert_eq!(n.lease_bucket, "OPC_zko_lease");
        assert_eq!(n.chain_bucket, "OPC_zko_chain");
        assert!(RegionNames::new("a.b").is_err());
        assert!(RegionNames::new("").is_err());
        assert!(RegionNames::new("x y").is_err());
    }
}

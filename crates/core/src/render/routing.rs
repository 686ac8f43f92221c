//! The routing plan: who gets traffic, a pure function of the backends' stored health
//! ([`RoutingPlan::from_backends`]); [`crate::render::nginx`] renders it. Rationale:
//! docs/architecture.md, "Routing plan".

use sha2::{Digest, Sha256};

use crate::model::backend::Backend;
use crate::model::backend_url::BackendUrl;

/// The short plan identifier sent in [`crate::render::nginx::PLAN_HEADER`].
pub fn plan_id(fingerprint: &str) -> &str {
    fingerprint.get(..16).unwrap_or(fingerprint)
}

/// A backend the plan routes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTarget {
    /// The backend's URL.
    pub url: BackendUrl,
    /// Whether it is the leader.
    pub is_leader: bool,
}

/// Who receives traffic: primaries share it, the backup takes it when all primaries fail.
///
/// - nothing healthy: empty plan, the proxy answers 404;
/// - only the leader healthy: the leader is the only primary;
/// - one or more healthy nodes: they are the primaries, a healthy leader is the backup.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoutingPlan {
    /// Backends that share the traffic, sorted by URL.
    pub primaries: Vec<RouteTarget>,
    /// The leader, standing by, when nodes are the primaries.
    pub backup: Option<RouteTarget>,
}

impl RoutingPlan {
    /// The plan implied by the backends' stored health. Backends whose URL does not validate
    /// are left out (they can never be rendered safely).
    pub fn from_backends(backends: &[Backend]) -> Self {
        let mut healthy: Vec<RouteTarget> = backends
            .iter()
            .filter(|b| b.is_healthy)
            .filter_map(|b| {
                b.parsed_url().ok().map(|url| RouteTarget {
                    url,
                    is_leader: b.is_leader,
                })
            })
            .collect();
        healthy.sort_by(|a, b| a.url.as_str().cmp(b.url.as_str()));
        healthy.dedup_by(|a, b| a.url == b.url);
        let (leaders, nodes): (Vec<_>, Vec<_>) = healthy.into_iter().partition(|t| t.is_leader);
        let leader = leaders.into_iter().next();
        if nodes.is_empty() {
            Self {
                primaries: leader.into_iter().collect(),
                backup: None,
            }
        } else {
            Self {
                primaries: nodes,
                backup: leader,
            }
        }
    }

    /// `true` when nothing is routable.
    pub fn is_empty(&self) -> bool {
        self.primaries.is_empty()
    }

    /// Every routed backend: primaries first, then the backup.
    pub fn targets(&self) -> impl Iterator<Item = (&RouteTarget, bool)> {
        self.primaries
            .iter()
            .map(|t| (t, false))
            .chain(self.backup.iter().map(|t| (t, true)))
    }

    /// A stable identity of the plan: equal plans give equal fingerprints.
    pub fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(b"jsonrpc-proxy routing plan v1\n");
        for (target, backup) in self.targets() {
            hasher.update(if backup { b"backup " } else { b"member " });
            hasher.update(if target.is_leader {
                b"leader "
            } else {
                b"node   "
            });
            hasher.update(target.url.as_str().as_bytes());
            hasher.update(b"\n");
        }
        hex::encode(hasher.finalize())
    }

    /// Redacted labels of the routed backends, for logs and the config pointer.
    pub fn labels(&self) -> Vec<String> {
        self.targets()
            .map(|(t, backup)| {
                let role = match (t.is_leader, backup) {
                    (_, true) => "backup",
                    (true, false) => "leader",
                    (false, false) => "node",
                };
                format!("{} ({role})", t.url.redacted())
            })
            .collect()
    }
}

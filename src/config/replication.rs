//! The `replication` section: several nodes sharing their swarms through Redis.

use std::fmt;

use serde::Deserialize;

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationConfig {
    pub enabled: bool,
    /// Must differ between nodes; empty: the host name.
    pub node_id: String,
    pub redis: RedisConfig,
    pub key_prefix: String,
    pub flush_interval_ms: u32,
    pub queue_capacity: usize,
    pub max_backlog: usize,
    pub timeout_ms: u32,
    pub warm_restart_timeout_secs: u32,
}

/// Where Redis is. Its `Debug` never shows a password.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    pub url: String,
    pub password_file: String,
    pub sentinel: SentinelConfig,
    pub cluster: ClusterConfig,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SentinelConfig {
    pub master_name: String,
    pub addresses: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    pub nodes: Vec<String>,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            enabled: false,
            node_id: String::new(),
            redis: RedisConfig::default(),
            key_prefix: "hayate".into(),
            flush_interval_ms: 50,
            queue_capacity: 65_536,
            max_backlog: 1_000_000,
            timeout_ms: 2000,
            warm_restart_timeout_secs: 10,
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379/0".into(),
            password_file: String::new(),
            sentinel: SentinelConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("password_file", &self.password_file)
            .field("sentinel", &self.sentinel)
            .field(
                "cluster",
                &self
                    .cluster
                    .nodes
                    .iter()
                    .map(|n| redact_url(n))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// `url` with any password replaced, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let shown = if userinfo.contains(':') || !user.is_empty() {
                format!("{user}:***")
            } else {
                "***".to_string()
            };
            format!("{scheme}://{shown}@{host}{path}")
        }
        None => url.to_string(),
    }
}

/// What kind of Redis deployment the section names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisMode {
    Single,
    Sentinel,
    Cluster,
}

impl RedisConfig {
    pub fn mode(&self) -> RedisMode {
        if !self.cluster.nodes.is_empty() {
            RedisMode::Cluster
        } else if !self.sentinel.master_name.is_empty() {
            RedisMode::Sentinel
        } else {
            RedisMode::Single
        }
    }
}

fn valid_redis_url(url: &str) -> bool {
    ["redis://", "rediss://", "redis+unix://", "unix://"]
        .iter()
        .any(|scheme| url.starts_with(scheme) && url.len() > scheme.len())
}

impl ReplicationConfig {
    /// Checks what types alone cannot; returns the dotted key (under `replication.`) and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        fn fail(key: &str, why: impl Into<String>) -> Result<(), (String, String)> {
            Err((format!("replication.{key}"), why.into()))
        }
        if self.node_id.len() > 255 {
            return fail("node_id", "at most 255 bytes");
        }
        if self.key_prefix.is_empty()
            || self.key_prefix.len() > 64
            || self.key_prefix.contains(['{', '}'])
        {
            return fail(
                "key_prefix",
                "1 to 64 bytes, without `{` or `}` (hayate adds the Cluster hash tags)",
            );
        }
        if !(5..=1000).contains(&self.flush_interval_ms) {
            return fail("flush_interval_ms", "must be between 5 and 1000");
        }
        if !(1024..=16_777_216).contains(&self.queue_capacity) {
            return fail("queue_capacity", "must be between 1024 and 16777216");
        }
        if !(1024..=100_000_000).contains(&self.max_backlog) {
            return fail("max_backlog", "must be between 1024 and 100000000");
        }
        if !(100..=60_000).contains(&self.timeout_ms) {
            return fail("timeout_ms", "must be between 100 and 60000");
        }
        if !(1..=3600).contains(&self.warm_restart_timeout_secs) {
            return fail("warm_restart_timeout_secs", "must be between 1 and 3600");
        }
        let redis = &self.redis;
        match redis.mode() {
            RedisMode::Cluster => {
                let valid =
                    |n: &String| valid_redis_url(n) || (!n.contains("://") && n.contains(':'));
                if let Some(node) = redis.cluster.nodes.iter().find(|n| !valid(n)) {
                    return fail(
                        "redis.cluster.nodes",
                        format!(
                            "`{}` is not host:port or a redis:// or rediss:// URL",
                            redact_url(node)
                        ),
                    );
                }
                if !redis.sentinel.master_name.is_empty() {
                    return fail(
                        "redis.sentinel.master_name",
                        "set either redis.sentinel or redis.cluster, not both",
                    );
                }
            }
            RedisMode::Sentinel => {
                if redis.sentinel.addresses.is_empty() {
                    return fail(
                        "redis.sentinel.addresses",
                        "the Sentinels to ask for the master (host:port, or redis:// URLs)",
                    );
                }
            }
            RedisMode::Single => {
                if !valid_redis_url(&redis.url) {
                    return fail(
                        "redis.url",
                        "must be a redis://, rediss:// or redis+unix:// URL",
                    );
                }
            }
        }
        if !redis.sentinel.addresses.is_empty() && redis.sentinel.master_name.is_empty() {
            return fail(
                "redis.sentinel.master_name",
                "the name of the master the Sentinels watch",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact_url("redis://user:s3cret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(
            redact_url("rediss://:s3cret@host/1"),
            "rediss://:***@host/1"
        );
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        let config = RedisConfig {
            url: "redis://:hunter2@h/0".into(),
            cluster: ClusterConfig {
                nodes: vec!["redis://:hunter3@c1:7000".into()],
            },
            ..RedisConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter"), "{shown}");
    }

    #[test]
    fn each_redis_shape_is_checked() {
        let mut c = ReplicationConfig::default();
        assert!(c.validate().is_ok());
        c.redis.url = "http://x".into();
        assert_eq!(c.validate().unwrap_err().0, "replication.redis.url");
        c.redis.sentinel.master_name = "mymaster".into();
        assert_eq!(
            c.validate().unwrap_err().0,
            "replication.redis.sentinel.addresses"
        );
        c.redis.sentinel.addresses = vec!["127.0.0.1:26379".into()];
        assert!(c.validate().is_ok());
        c.redis.cluster.nodes = vec!["redis://127.0.0.1:7000".into()];
        assert_eq!(
            c.validate().unwrap_err().0,
            "replication.redis.sentinel.master_name"
        );
        c.redis.sentinel = SentinelConfig::default();
        assert!(c.validate().is_ok());
        c.key_prefix = "a{b".into();
        assert_eq!(c.validate().unwrap_err().0, "replication.key_prefix");
    }
}

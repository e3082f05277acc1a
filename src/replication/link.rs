//! The replication thread's connection to Redis, whatever the deployment: one server (a URL,
//! TLS with `rediss://`), a Sentinel-managed master, or a Cluster. Any error drops the
//! connection; the next connect asks the Sentinels for the master again, so a failover is
//! followed without a restart (the `redis` crate resolves a Sentinel master only when it
//! connects). Errors and logs name hosts, never passwords.

use std::time::Duration;

use anyhow::Context;
use redis::cluster::{ClusterClient, ClusterConnection};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, ConnectionLike, FromRedisValue, IntoConnectionInfo, RedisResult, Value};

use crate::config::{RedisMode, ReplicationConfig, redact_url};

enum Conn {
    Single(redis::Connection),
    Cluster(Box<ClusterConnection>),
}

enum Target {
    Single(redis::ConnectionInfo),
    Sentinel(Box<SentinelClient>),
    Cluster(ClusterClient),
}

pub struct Link {
    target: Target,
    timeout: Duration,
    conn: Option<Conn>,
    /// Where this link goes, for logs (no password).
    description: String,
}

impl Link {
    /// Reads the password file and checks the addresses; connects later.
    pub fn new(config: &ReplicationConfig) -> anyhow::Result<Link> {
        let redis = &config.redis;
        let password = match redis.password_file.as_str() {
            "" => None,
            path => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("replication.redis.password_file: cannot read {path}")
                })?;
                // A Secret mounted as a file often ends with a newline that is not part of it.
                Some(text.trim_end_matches(['\n', '\r']).to_string())
            }
        };
        let timeout = Duration::from_millis(u64::from(config.timeout_ms));
        let (target, description) = match redis.mode() {
            RedisMode::Single => {
                let mut info = redis
                    .url
                    .as_str()
                    .into_connection_info()
                    .map_err(|e| invalid("replication.redis.url", &e))?;
                if let Some(password) = &password {
                    let settings = info.redis_settings().clone().set_password(password);
                    info = info.set_redis_settings(settings);
                }
                (Target::Single(info), redact_url(&redis.url))
            }
            RedisMode::Sentinel => {
                let sentinels: Vec<String> = redis
                    .sentinel
                    .addresses
                    .iter()
                    .map(|a| with_scheme(a))
                    .collect();
                let mut node = redis::RedisConnectionInfo::default();
                if let Some(password) = &password {
                    node = node.set_password(password);
                }
                let client = SentinelClient::build(
                    sentinels.clone(),
                    redis.sentinel.master_name.clone(),
                    Some(SentinelNodeConnectionInfo::default().set_redis_connection_info(node)),
                    SentinelServerType::Master,
                )
                .map_err(|e| invalid("replication.redis.sentinel", &e))?;
                let description = format!(
                    "master {} of sentinels {}",
                    redis.sentinel.master_name,
                    sentinels
                        .iter()
                        .map(|s| redact_url(s))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                (Target::Sentinel(Box::new(client)), description)
            }
            RedisMode::Cluster => {
                let nodes: Vec<String> =
                    redis.cluster.nodes.iter().map(|n| with_scheme(n)).collect();
                let mut builder = ClusterClient::builder(nodes)
                    .connection_timeout(timeout)
                    .response_timeout(timeout);
                if let Some(password) = &password {
                    builder = builder.password(password);
                }
                let client = builder
                    .build()
                    .map_err(|e| invalid("replication.redis.cluster.nodes", &e))?;
                let description = format!(
                    "cluster {}",
                    redis
                        .cluster
                        .nodes
                        .iter()
                        .map(|n| redact_url(n))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                (Target::Cluster(client), description)
            }
        };
        Ok(Link {
            target,
            timeout,
            conn: None,
            description,
        })
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    /// Connects (asking the Sentinels for the master first, where there are any).
    pub fn connect(&mut self) -> RedisResult<()> {
        let conn = match &mut self.target {
            Target::Single(info) => {
                let client = redis::Client::open(info.clone())?;
                Conn::Single(client.get_connection_with_timeout(self.timeout)?)
            }
            Target::Sentinel(sentinel) => {
                let client = sentinel.get_client()?;
                Conn::Single(client.get_connection_with_timeout(self.timeout)?)
            }
            Target::Cluster(client) => Conn::Cluster(Box::new(client.get_connection()?)),
        };
        if let Conn::Single(conn) = &conn {
            conn.set_read_timeout(Some(self.timeout))?;
            conn.set_write_timeout(Some(self.timeout))?;
        }
        self.conn = Some(conn);
        Ok(())
    }

    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    fn conn(&mut self) -> RedisResult<&mut dyn ConnectionLike> {
        match &mut self.conn {
            Some(Conn::Single(c)) => Ok(c),
            Some(Conn::Cluster(c)) => Ok(&mut **c),
            None => Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "not connected",
            ))),
        }
    }

    /// One command; an error drops the connection.
    pub fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        let result = self.conn().and_then(|c| cmd.query(c));
        if result.is_err() {
            self.disconnect();
        }
        result
    }

    /// Commands in one round trip where the deployment allows (a Cluster routes each command
    /// to its own node, one at a time); the replies in order. An error drops the connection.
    pub fn run(&mut self, cmds: &[Cmd]) -> RedisResult<Vec<Value>> {
        let result = match &mut self.conn {
            Some(Conn::Single(c)) => {
                let mut pipe = redis::pipe();
                cmds.iter().for_each(|cmd| {
                    pipe.add_command(cmd.clone());
                });
                pipe.query(c)
            }
            Some(Conn::Cluster(c)) => cmds.iter().map(|cmd| cmd.query(&mut **c)).collect(),
            None => self.conn().map(|_| Vec::new()),
        };
        if result.is_err() {
            self.disconnect();
        }
        result
    }
}

/// `host:port` as a URL, as the `redis` crate wants its addresses.
fn with_scheme(address: &str) -> String {
    if address.contains("://") {
        address.to_string()
    } else {
        format!("redis://{address}")
    }
}

fn invalid(key: &str, e: &redis::RedisError) -> anyhow::Error {
    // The crate's messages about URLs do not carry the password; say which key it was.
    anyhow::anyhow!("invalid config: key `{key}`: {e}")
}

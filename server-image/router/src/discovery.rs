//! What the router follows while it runs: replicas from the Kubernetes API (the ready endpoints of
//! each model Service's EndpointSlices), and API keys (a Secret, or a file), each watched, so that
//! changes apply without a restart.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};

use crate::backends::Pool;
use crate::tenants::{LIMITS_ANNOTATION, LimitsConfig, Tenants, parse_keys_file};

/// The label Kubernetes puts on a Service's EndpointSlices.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A model and the Service in front of its replicas.
#[derive(Debug, Clone)]
pub struct Target {
    /// Model id.
    pub model: String,
    /// Service name.
    pub service: String,
}

/// The base URLs of the ready endpoints of `service` among `slices`, on the port named
/// `port_name` (or the slice's only port), sorted.
pub fn ready_urls(slices: &[Arc<EndpointSlice>], service: &str, port_name: &str) -> Vec<String> {
    let mut urls = Vec::new();
    for slice in slices {
        if slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)).map(String::as_str) != Some(service) {
            continue;
        }
        let ports = slice.ports.as_deref().unwrap_or_default();
        let port = ports.iter().find(|p| p.name.as_deref() == Some(port_name)).or(if ports.len() == 1 {
            ports.first()
        } else {
            None
        });
        let Some(port) = port.and_then(|p| p.port) else { continue };
        for ep in &slice.endpoints {
            // A missing `ready` means ready (the API's documented default).
            if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            if let Some(addr) = ep.addresses.first() {
                urls.push(if addr.contains(':') {
                    format!("http://[{addr}]:{port}")
                } else {
                    format!("http://{addr}:{port}")
                });
            }
        }
    }
    urls.sort();
    urls.dedup();
    urls
}

/// Follows the EndpointSlices of `targets` in `namespace` until the process ends; sets `synced`
/// once the first full list is in.
pub async fn run(
    client: kube::Client,
    namespace: String,
    targets: Vec<Target>,
    port_name: String,
    pool: Arc<Pool>,
    synced: Arc<AtomicBool>,
) {
    let api: Api<EndpointSlice> = Api::namespaced(client, &namespace);
    let services: Vec<&str> = targets.iter().map(|t| t.service.as_str()).collect();
    let config = watcher::Config::default().labels(&format!("{SERVICE_NAME_LABEL} in ({})", services.join(",")));
    let (store, writer) = reflector::store();
    let events = watcher::watcher(api, config).default_backoff().reflect(writer);
    let mut events = std::pin::pin!(events);
    tracing::info!(%namespace, services = %services.join(","), "following EndpointSlices");
    while let Some(ev) = events.next().await {
        match ev {
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
            Ok(watcher::Event::InitDone) => {
                update(&store, &targets, &port_name, &pool);
                synced.store(true, Ordering::Relaxed);
            }
            Ok(_) => update(&store, &targets, &port_name, &pool),
            Err(e) => tracing::warn!(error = %e, "watching EndpointSlices failed; retrying"),
        }
    }
}

fn update(store: &Store<EndpointSlice>, targets: &[Target], port_name: &str, pool: &Pool) {
    let slices = store.state();
    for t in targets {
        let urls = ready_urls(&slices, &t.service, port_name);
        if urls != pool.replicas(&t.model).iter().map(|r| r.url.clone()).collect::<Vec<_>>() {
            tracing::info!(model = %t.model, replicas = ?urls, "replicas changed");
            pool.set(&t.model, &urls);
        }
    }
}

/// Follows the keys' Secret `name` in `namespace`: its data entries are tenant = key, its
/// `llmserve.dev/limits` annotation (when set and valid) the limits, else `limits`. A Secret that
/// is missing or deleted leaves no keys (every request is refused), never the old ones.
pub async fn follow_keys_secret(
    client: kube::Client,
    namespace: String,
    name: String,
    limits: LimitsConfig,
    tenants: Arc<Tenants>,
) {
    let api: Api<Secret> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let events = watcher::watcher(api, config).default_backoff();
    let mut events = std::pin::pin!(events);
    tracing::info!(%namespace, secret = %name, "following the API keys");
    let mut listed = false;
    while let Some(ev) = events.next().await {
        match ev {
            Ok(watcher::Event::Init) => listed = false,
            Ok(watcher::Event::InitApply(secret) | watcher::Event::Apply(secret)) => {
                listed = true;
                let (keys, limits) = keys_of(&secret, &limits);
                tenants.set(keys, limits);
            }
            Ok(watcher::Event::InitDone) if !listed => {
                tracing::warn!(secret = %name, "the API keys' Secret does not exist; refusing every request");
                tenants.set(BTreeMap::new(), limits.clone());
            }
            Ok(watcher::Event::InitDone) => {}
            Ok(watcher::Event::Delete(_)) => {
                tracing::warn!(secret = %name, "the API keys' Secret was deleted; refusing every request");
                tenants.set(BTreeMap::new(), limits.clone());
            }
            Err(e) => tracing::warn!(secret = %name, error = %e, "watching the API keys failed; retrying"),
        }
    }
}

/// The keys and limits a Secret holds (limits from its annotation, else `fallback`).
fn keys_of(secret: &Secret, fallback: &LimitsConfig) -> (BTreeMap<String, Vec<u8>>, LimitsConfig) {
    let keys =
        secret.data.iter().flatten().map(|(tenant, key)| (tenant.clone(), key.0.trim_ascii().to_vec())).collect();
    let annotated = secret.metadata.annotations.as_ref().and_then(|a| a.get(LIMITS_ANNOTATION));
    let limits = match annotated.map(|json| LimitsConfig::parse(json)) {
        Some(Ok(l)) => l,
        Some(Err(e)) => {
            tracing::warn!(error = %e, "ignoring the API keys' limits annotation");
            fallback.clone()
        }
        None => fallback.clone(),
    };
    (keys, limits)
}

/// Follows a keys file of `tenant=key` lines: re-read every 2 s when its modification time
/// changed; a file that cannot be read or parsed leaves the keys as they were (and says why).
pub async fn follow_keys_file(path: PathBuf, limits: LimitsConfig, tenants: Arc<Tenants>) {
    let files = [path.clone()];
    llmserve_openai::files::on_change(&files, std::time::Duration::from_secs(2), || {
        match std::fs::read_to_string(&path).map_err(|e| e.to_string()).and_then(|t| parse_keys_file(&t)) {
            Ok(keys) => tenants.set(keys, limits.clone()),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "keeping the API keys as they were"),
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(service: &str, port: (&str, i32), endpoints: &[(&str, Option<bool>)]) -> Arc<EndpointSlice> {
        let eps: Vec<serde_json::Value> = endpoints
            .iter()
            .map(|(a, r)| match r {
                Some(r) => serde_json::json!({"addresses": [a], "conditions": {"ready": r}}),
                None => serde_json::json!({"addresses": [a]}),
            })
            .collect();
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("{service}-x"), "labels": {SERVICE_NAME_LABEL: service}},
                "addressType": "IPv4",
                "ports": [{"name": port.0, "port": port.1}, {"name": "metrics", "port": 9999}],
                "endpoints": eps,
            }))
            .unwrap(),
        )
    }

    #[test]
    fn ready_endpoints_on_the_named_port() {
        let slices = vec![
            slice("a", ("http", 8000), &[("10.0.0.2", Some(true)), ("10.0.0.1", None), ("10.0.0.3", Some(false))]),
            slice("b", ("http", 8001), &[("fd00::1", Some(true))]),
            slice("a", ("web", 8002), &[("10.0.0.4", Some(true))]),
        ];
        assert_eq!(ready_urls(&slices, "a", "http"), ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]);
        assert_eq!(ready_urls(&slices, "b", "http"), ["http://[fd00::1]:8001"]);
        assert!(ready_urls(&slices, "c", "http").is_empty());
    }
}

//! Name resolution for the Redis client without the C library's resolver.

use std::sync::Arc;

/// Name resolution with hickory (`/etc/hosts`, then `/etc/resolv.conf`).
#[derive(Default, Clone)]
pub(super) struct HickoryResolver {
    resolver: Arc<std::sync::OnceLock<Result<hickory_resolver::TokioResolver, String>>>,
}

impl redis::io::AsyncDNSResolver for HickoryResolver {
    fn resolve<'a, 'b: 'a>(
        &'a self,
        host: &'b str,
        port: u16,
    ) -> redis::RedisFuture<'a, Box<dyn Iterator<Item = std::net::SocketAddr> + Send + 'a>> {
        Box::pin(async move {
            let unresolved = |detail: String| {
                redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::NotFound, detail))
            };
            if let Ok(ip) = host.parse::<std::net::IpAddr>() {
                let addrs: Box<dyn Iterator<Item = std::net::SocketAddr> + Send> =
                    Box::new(std::iter::once(std::net::SocketAddr::new(ip, port)));
                return Ok(addrs);
            }
            let resolver = self
                .resolver
                .get_or_init(|| {
                    hickory_resolver::TokioResolver::builder_tokio()
                        .and_then(|builder| builder.build())
                        .map_err(|error| error.to_string())
                })
                .as_ref()
                .map_err(|error| unresolved(format!("no DNS configuration: {error}")))?;
            let lookup = resolver
                .lookup_ip(host)
                .await
                .map_err(|error| unresolved(format!("cannot resolve {host}: {error}")))?;
            let addrs: Vec<std::net::SocketAddr> = lookup
                .iter()
                .map(|ip| std::net::SocketAddr::new(ip, port))
                .collect();
            let addrs: Box<dyn Iterator<Item = std::net::SocketAddr> + Send> =
                Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

# Configuration files shared by the benchmark scripts (sourced, not run).

# gateway_toml LISTEN ISSUER UPSTREAM [SERVER_LINE]: jwtgate with one worker; /api protected
# (group `bench`, a rate limit that never triggers, two identity headers), /public public;
# both to UPSTREAM. SERVER_LINE, if given, is one more line of [server].
gateway_toml() {
  cat <<TOML
[server]
listen = "$1"
workers = 1
${4:-}
[okta]
issuer = "$2"
audience = "api://bench"
[upstreams.up]
targets = ["http://$3"]
[[routes]]
path = "/api"
upstream = "up"
groups = ["bench"]
[[routes]]
path = "/public"
upstream = "up"
public = true
[rate_limits.groups]
bench = { requests = 1000000000, per = "1s" }
[forward]
claims_to_headers = { sub = "X-Auth-Subject", groups = "X-Auth-Groups" }
TOML
}

# nginx_proxy_conf DIR LISTEN UPSTREAM: nginx as run.sh's plain reverse proxy, in one process
# (no master, so the process measured is the one that serves).
nginx_proxy_conf() {
  cat <<NGINX
worker_processes 1; master_process off; daemon off; pid $1/proxy.pid; error_log stderr error;
events { worker_connections 1024; }
http { access_log off; upstream up { server $3; keepalive 64; }
  server { listen $2; keepalive_requests 1000000;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NGINX
}

# upstream_conf DIR LISTEN: the upstream, nginx answering `ok\n` or $BODY_BYTES bytes.
upstream_conf() {
  cat <<NGINX
worker_processes 1; daemon off; pid $1/upstream.pid; error_log stderr error;
events { worker_connections 1024; }
http { access_log off;
  server { listen $2; keepalive_requests 1000000; $(scripts/bench/upstream-body.sh "$1") } }
NGINX
}

//! nginx (Debian's `nginx`) in front of HTTP servers, on a free port, in a
//! temporary directory, stopped on drop: the round-robin balancer of a
//! fleet, or a reverse proxy that changes what an upstream's responses
//! look like (`location` directives added by the test).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{clients, http, trust};

pub const NGINX: &str = "/usr/sbin/nginx";

pub struct Nginx {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// nginx proxying every request to `servers` (`host:port`, taken in
    /// turn), with `directives` added to its `location /`. Waits until it
    /// answers `GET /v2/` with 200.
    pub fn proxy(servers: &[String], directives: &str) -> Nginx {
        clients::require_tool(NGINX, "nginx");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = super::free_port();
        let servers: String = servers
            .iter()
            .map(|s| format!("    server {s};\n"))
            .collect();
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n\
               fastcgi_temp_path {d};\n  uwsgi_temp_path {d};\n  scgi_temp_path {d};\n\
               upstream servers {{\n{servers}    keepalive 8;\n  }}\n\
               server {{\n    listen 127.0.0.1:{port};\n    client_max_body_size 0;\n\
                 location / {{\n      proxy_pass http://servers;\n      proxy_http_version 1.1;\n\
                   proxy_set_header Connection \"\";\n      proxy_set_header Host $http_host;\n\
                   proxy_buffering off;\n{directives}    }}\n  }}\n}}\n"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).expect("write nginx.conf");
        let child = Command::new(NGINX)
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let nginx = Nginx {
            port,
            child,
            _dir: dir,
        };
        assert!(
            trust::wait_until(Duration::from_secs(10), || {
                http::get(&format!("http://127.0.0.1:{port}/v2/")).is_ok_and(|r| r.status == 200)
            }),
            "nginx did not come up"
        );
        nginx
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

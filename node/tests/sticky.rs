//! Stickiness on the real request path: by client address through a table's `server_id`, and
//! by cookie. A client stays on its server; when that server dies (its backend stops and the
//! health check takes it down) the client moves once and sticks to the new one.

mod util;

use std::collections::HashMap;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use sluice_node::backend::server_id;
use sluice_sync::{DataType, Key};
use util::{Client, TestBackend, TestNode, connect_from, wait_until};

const STICKY: &str = "[[table]]\nname = \"sticky\"\nkey = \"ip\"\nsize = 1000\nexpire = \"60s\"\nstore = [\"server_id\"]\n";

/// Three backends behind one frontend, round-robin, checked every 50 ms.
async fn node(stick: &str, mode: &str) -> (TestNode, Vec<TestBackend>) {
    let mut apps = Vec::new();
    for name in ["app1", "app2", "app3"] {
        apps.push(TestBackend::start(name).await);
    }
    let servers: Vec<String> = apps
        .iter()
        .map(|a| format!("{{ name = \"{}\", addr = \"{}\" }}", a.name, a.addr))
        .collect();
    let toml = format!(
        "{STICKY}[[frontend]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nmode = \"{mode}\"\nbackend = \"app\"\n\
         [[backend]]\nname = \"app\"\nbalance = \"roundrobin\"\nstick = \"{stick}\"\nservers = [{}]\n\
         check = {{ interval = \"50ms\", path = \"/\", rise = 1, fall = 1 }}\n",
        servers.join(", ")
    );
    (TestNode::start(&toml).await, apps)
}

fn get(cookie: Option<&str>) -> Request<Full<Bytes>> {
    let mut b = Request::get("/").header("host", "test");
    if let Some(c) = cookie {
        b = b.header("cookie", format!("other=1; {c}"));
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

/// Stops the backend named `name` and waits until the node has taken it down.
async fn kill(n: &TestNode, apps: &mut Vec<TestBackend>, name: &str) {
    let i = apps.iter().position(|a| a.name == name).unwrap();
    apps.remove(i).stop().await;
    wait_until(Duration::from_secs(5), "the server is down", || async {
        n.node.server_state("app", name).is_some_and(|s| !s.up)
    })
    .await;
}

/// Sends 100 requests, every tenth on a new connection, and returns the servers that
/// answered, with counts.
async fn hundred_from(n: &TestNode, src: &str, cookie: Option<&str>) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    let mut c = Client::connect_from(src, n.addr("web")).await;
    for i in 0..100 {
        if i % 10 == 9 {
            c = Client::connect_from(src, n.addr("web")).await;
        }
        let (status, headers, body) = c.send(get(cookie)).await;
        assert_eq!(status, 200);
        assert!(
            cookie.is_none() || headers.get("set-cookie").is_none(),
            "a valid cookie is not set again"
        );
        *seen
            .entry(String::from_utf8(body.to_vec()).unwrap())
            .or_insert(0) += 1;
    }
    seen
}

fn only(seen: &HashMap<String, usize>) -> String {
    assert_eq!(seen.len(), 1, "one server answered everything: {seen:?}");
    seen.keys().next().unwrap().clone()
}

#[tokio::test]
async fn sticky_on_src_keeps_the_client_and_moves_it_once_when_its_server_dies() {
    let (n, mut apps) = node("on src table sticky", "http").await;
    let stored = |n: &TestNode| {
        n.node.tables().get("sticky").unwrap().read_key(
            &Key::from_ip("127.0.0.20".parse().unwrap()),
            DataType::ServerId,
            n.node.clock().tick(),
        )
    };
    let first = only(&hundred_from(&n, "127.0.0.20", None).await);
    assert_eq!(stored(&n), Some(u64::from(server_id(&first))));
    // Another client is balanced on its own (round-robin would spread it without the table).
    only(&hundred_from(&n, "127.0.0.21", None).await);

    kill(&n, &mut apps, &first).await;
    let second = only(&hundred_from(&n, "127.0.0.20", None).await);
    assert_ne!(second, first, "moved off the dead server");
    assert_eq!(stored(&n), Some(u64::from(server_id(&second))));

    n.stop().await;
    for a in apps {
        a.stop().await;
    }
}

#[tokio::test]
async fn a_new_assignment_is_stored_while_the_server_is_still_answering() {
    let (n, apps) = node("on src table sticky", "http").await;
    let stored = || {
        n.node.tables().get("sticky").unwrap().read_key(
            &Key::from_ip("127.0.0.24".parse().unwrap()),
            DataType::ServerId,
            n.node.clock().tick(),
        )
    };
    let mut c = Client::connect_from("127.0.0.24", n.addr("web")).await;
    let asked = tokio::spawn(async move { c.get("/slow").await });
    wait_until(
        Duration::from_secs(5),
        "a server holds the request",
        || async { apps.iter().any(|a| a.in_flight.load(SeqCst) == 1) },
    )
    .await;
    let app = apps.iter().find(|a| a.in_flight.load(SeqCst) == 1).unwrap();
    // Recorded when the server took the request, so replication carries it while the server
    // works; a client that moves to another node after its answer finds its server there.
    assert_eq!(stored(), Some(u64::from(server_id(&app.name))));

    // The answer then comes from that server. (A release may come before the server waits
    // for it, so it is repeated until the answer is in.)
    wait_until(Duration::from_secs(5), "the answer", || {
        app.release();
        let done = asked.is_finished();
        async move { done }
    })
    .await;
    let (status, body) = asked.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, format!("{} slow", app.name));
    n.stop().await;
    for a in apps {
        a.stop().await;
    }
}

#[tokio::test]
async fn sticky_cookie_names_the_server_and_is_replaced_when_it_dies() {
    let (n, mut apps) = node("cookie SERVERID", "http").await;
    let mut c = Client::connect_from("127.0.0.22", n.addr("web")).await;
    let (status, headers, body) = c.send(get(None)).await;
    assert_eq!(status, 200);
    let first = String::from_utf8(body.to_vec()).unwrap();
    assert_eq!(
        headers.get("set-cookie").unwrap(),
        &format!("SERVERID={first}; Path=/; HttpOnly")
    );
    let cookie = format!("SERVERID={first}");
    assert_eq!(
        only(&hundred_from(&n, "127.0.0.22", Some(&cookie)).await),
        first
    );
    // A cookie naming no server is replaced.
    let (_, headers, _) = c.send(get(Some("SERVERID=nope"))).await;
    assert!(headers.get("set-cookie").is_some());

    kill(&n, &mut apps, &first).await;
    let (status, headers, body) = c.send(get(Some(&cookie))).await;
    assert_eq!(status, 200);
    let second = String::from_utf8(body.to_vec()).unwrap();
    assert_ne!(second, first);
    assert_eq!(
        headers.get("set-cookie").unwrap(),
        &format!("SERVERID={second}; Path=/; HttpOnly")
    );
    let cookie = format!("SERVERID={second}");
    assert_eq!(
        only(&hundred_from(&n, "127.0.0.22", Some(&cookie)).await),
        second
    );

    n.stop().await;
    for a in apps {
        a.stop().await;
    }
}

#[tokio::test]
async fn a_tcp_frontend_sticks_connections_by_source() {
    let (n, apps) = node("on src table sticky", "tcp").await;
    let mut seen = HashMap::new();
    for _ in 0..20 {
        // HTTP over the TCP proxy: one request per connection.
        let stream = connect_from("127.0.0.23", n.addr("web")).await;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let resp = sender.send_request(get(None)).await.unwrap();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        *seen
            .entry(String::from_utf8(body.to_vec()).unwrap())
            .or_insert(0) += 1;
    }
    only(&seen);
    n.stop().await;
    for a in apps {
        a.stop().await;
    }
}

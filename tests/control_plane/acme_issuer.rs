//! The control plane's ACME issuer against a real Pebble (tests/src/acme.rs), beyond the
//! issuance and the blocklist refusal of custom_domains.rs: the account made once and reused
//! after a restart, a challenge the data planes answer wrongly (refused for good), a sink that
//! cannot publish (worth another try), and the token withdrawn in every case.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use control_plane::acme::{AcmeSettings, BoxFuture, ChallengeSink, Issuer, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmgate_tests::acme::{Pebble, PebbleOptions};

/// What a sink does with a challenge.
#[derive(Clone, Copy, PartialEq)]
enum Answer {
    /// Serves the key authorization, as the data planes do.
    Right,
    /// Serves another body at the token's path: a data plane with a stale config.
    Wrong,
    /// Cannot publish at all (the control plane's store or push failed).
    Unpublishable,
}

/// A loopback HTTP server serving the published tokens (the data planes' part), and a record
/// of what was published and withdrawn.
#[derive(Clone)]
struct Sink {
    answer: Answer,
    served: Arc<Mutex<HashMap<String, String>>>,
    published: Arc<Mutex<Vec<String>>>,
    withdrawn: Arc<Mutex<Vec<String>>>,
}

impl Sink {
    /// Serves on a free loopback port (Pebble's `httpPort`); returns the sink and the port.
    async fn start(answer: Answer) -> (Sink, u16) {
        let sink = Sink {
            answer,
            served: Arc::default(),
            published: Arc::default(),
            withdrawn: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = Arc::clone(&sink.served);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let served = Arc::clone(&served);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head);
                    let body = head
                        .split_whitespace()
                        .nth(1)
                        .and_then(|path| path.strip_prefix(model::ACME_CHALLENGE_PREFIX))
                        .and_then(|token| served.lock().unwrap().get(token).cloned());
                    let response = match body {
                        Some(body) => format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\
                             content-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        ),
                        None => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\
                                 connection: close\r\n\r\n"
                            .to_owned(),
                    };
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        (sink, port)
    }

    fn published(&self) -> Vec<String> {
        self.published.lock().unwrap().clone()
    }

    fn withdrawn(&self) -> Vec<String> {
        self.withdrawn.lock().unwrap().clone()
    }

    fn served(&self) -> Vec<String> {
        self.served.lock().unwrap().keys().cloned().collect()
    }
}

impl ChallengeSink for Sink {
    fn publish<'a>(
        &'a self,
        token: &'a str,
        key_authorization: &'a str,
    ) -> BoxFuture<'a, Result<(), String>> {
        self.published.lock().unwrap().push(token.to_owned());
        let body = match self.answer {
            Answer::Right => key_authorization.to_owned(),
            Answer::Wrong => format!("{token}.not-this-account"),
            Answer::Unpublishable => {
                return Box::pin(async { Err("the store is read-only".to_owned()) })
            }
        };
        self.served.lock().unwrap().insert(token.to_owned(), body);
        Box::pin(async { Ok(()) })
    }

    fn withdraw<'a>(&'a self, token: &'a str) -> BoxFuture<'a, ()> {
        self.served.lock().unwrap().remove(token);
        self.withdrawn.lock().unwrap().push(token.to_owned());
        Box::pin(async {})
    }
}

fn issuer(pebble: &Pebble, data_dir: &Path) -> Issuer {
    Issuer::new(
        &Settings {
            acme: Some(AcmeSettings {
                directory: pebble.directory_url(),
                ca_file: Some(pebble.ca_file()),
                contact: vec!["mailto:ops@example.test".to_owned()],
            }),
            ..Settings::default()
        },
        data_dir,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The account files in `dir`.
fn accounts(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("acme-account-"))
        })
        .collect()
}

/// One account per data directory: made by the first issue, written 0600, and used again by
/// the issuer of the next start (Pebble would refuse nothing, so the proof is the file left
/// untouched and a second certificate). The token is withdrawn after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_is_made_once_and_reused_after_a_restart() {
    let (sink, http_port) = Sink::start(Answer::Right).await;
    let pebble = Pebble::start(PebbleOptions {
        http_port,
        ..PebbleOptions::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let data = tempfile::tempdir().unwrap();

    let first = issuer(&pebble, data.path())
        .issue("shop.example.test", &sink)
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- pebble:\n{}", pebble.log()));
    assert_eq!(first.authority, "acme");
    let files = accounts(data.path());
    assert_eq!(files.len(), 1, "{files:?}");
    let mode = std::fs::metadata(&files[0]).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", files[0].display());
    let credentials = std::fs::read_to_string(&files[0]).unwrap();
    assert_eq!(sink.published().len(), 1);
    assert!(
        sink.served().is_empty(),
        "not withdrawn: {:?}",
        sink.served()
    );

    let second = issuer(&pebble, data.path())
        .issue("shop.example.test", &sink)
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- pebble:\n{}", pebble.log()));
    assert_eq!(accounts(data.path()), files);
    assert_eq!(std::fs::read_to_string(&files[0]).unwrap(), credentials);
    assert_ne!(second.key_pem, first.key_pem, "a fresh key per certificate");
    assert_eq!(sink.published().len(), 2);
    assert_eq!(sink.withdrawn(), sink.published());
    assert!(
        sink.served().is_empty(),
        "not withdrawn: {:?}",
        sink.served()
    );
    // Pebble logs each new account it makes.
    let log = pebble.log();
    assert_eq!(
        log.matches("There are now 1 accounts in memory").count(),
        1,
        "{log}"
    );
    assert!(!log.contains("There are now 2 accounts"), "{log}");
}

/// A data plane answering the token with the wrong body: Pebble marks the challenge invalid,
/// the issuer says so with Pebble's problem and does not ask for a retry; the token is
/// withdrawn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_answer_to_the_challenge_is_refused_for_good() {
    let (sink, http_port) = Sink::start(Answer::Wrong).await;
    let pebble = Pebble::start(PebbleOptions {
        http_port,
        ..PebbleOptions::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let data = tempfile::tempdir().unwrap();
    let error = issuer(&pebble, data.path())
        .issue("shop.example.test", &sink)
        .await
        .expect_err("issued for a wrong key authorization");
    assert!(error.refused, "{error:?}");
    // Pebble: "urn:ietf:params:acme:error:unauthorized: The key authorization file from the
    // server did not match this challenge ..."
    assert!(
        error
            .reason
            .contains("urn:ietf:params:acme:error:unauthorized")
            && error.reason.contains("key authorization"),
        "{error:?}\n--- pebble:\n{}",
        pebble.log()
    );
    assert_eq!(sink.published().len(), 1);
    assert_eq!(sink.withdrawn(), sink.published());
    assert!(
        sink.served().is_empty(),
        "not withdrawn: {:?}",
        sink.served()
    );
}

/// A challenge that cannot be published: the issuer stops before telling Pebble it is ready,
/// and asks to be tried again; what may have been published is withdrawn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_that_cannot_be_published_is_worth_another_try() {
    let (sink, http_port) = Sink::start(Answer::Unpublishable).await;
    let pebble = Pebble::start(PebbleOptions {
        http_port,
        ..PebbleOptions::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let data = tempfile::tempdir().unwrap();
    let error = issuer(&pebble, data.path())
        .issue("shop.example.test", &sink)
        .await
        .expect_err("issued without publishing");
    assert!(!error.refused, "{error:?}");
    assert!(error.reason.contains("the store is read-only"), "{error:?}");
    assert_eq!(sink.published().len(), 1);
    assert_eq!(sink.withdrawn(), sink.published());
    // Pebble was never asked to validate.
    assert!(
        !pebble.log().contains("Pulled a task from the Tasks queue"),
        "{}",
        pebble.log()
    );
}

//! What the rotator refuses because it would leak: a ZenML server that redirects elsewhere.
//! Through the built binary.

use crate::common::rig::Rig;
use crate::common::stub_http::{StubReply, StubServer};
use crate::common::zenml;

/// A ZenML server that redirects: the command fails saying so, and the server pointed at never
/// hears from the rotator (neither the password of the login nor a token).
#[test]
fn a_zenml_server_that_redirects_gets_no_credential_elsewhere() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (elsewhere, redirector) = rt.block_on(async {
        let elsewhere = StubServer::recorder().await;
        let to = elsewhere.url.replace("127.0.0.1", "localhost");
        let redirector = StubServer::start(move |r| StubReply::redirect(308, &to, r)).await;
        (elsewhere, redirector)
    });
    let mut rig = Rig::new();
    rig.file_store("local")
        .key("k", "any", "local", "k.env", "");
    rig.write();
    let policy = rig.config();
    let text = std::fs::read_to_string(&policy).unwrap().replace(
        &format!("url = {:?}", zenml().url),
        &format!("url = {:?}", redirector.url),
    );
    std::fs::write(&policy, text).unwrap();
    for args in [&["inventory"][..], &["once"]] {
        let ran = rig.expect(args, 1);
        assert!(
            ran.stdout.contains(
                "the ZenML server answered with a redirect (HTTP 308 to http://localhost:"
            ) || ran.stderr.contains(
                "the ZenML server answered with a redirect (HTTP 308 to http://localhost:"
            ),
            "{}",
            ran.describe()
        );
    }
    let login = redirector.requests();
    assert!(
        login.iter().all(|r| r.path() == "/api/v1/login"),
        "{login:?}"
    );
    assert!(login[0].body_text().contains("grant_type=password"));
    assert!(
        elsewhere.requests().is_empty(),
        "a redirect was followed: {:?}",
        elsewhere.requests()
    );
}

//! Auditors and integrators: a stream, an aggregate's state at an older version, the hash
//! chain verified, the log in commit order with paging; the `events` subscription over a real
//! WebSocket (graphql-transport-ws) replays from a position then follows live, with no gap.

mod common;

use std::time::Duration;

use common::TestApp;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::test]
async fn an_auditor_reads_a_stream_an_older_state_and_verifies_the_chain() {
    let app = TestApp::start().await;
    let admin = app.admin_token.clone();
    let auditor = app.user_with_role("audit@example.com", "AUDITOR").await;
    app.add_branch("LIS", 38.7223, -9.1393).await;
    let car = app.add_car("LIS", "Fiat", "50.00").await;
    app.ok(
        Some(&admin),
        "mutation($c: UUID!) { changeDailyRate(id: $c, dailyRate: \"60.00\") { dailyRate { amount } } }",
        json!({ "c": car }),
    )
    .await;
    let id = car.to_string();

    let stream = app
        .ok(
            Some(&auditor),
            "query($id: String!) { stream(aggregateType: \"car\", aggregateId: $id) \
             { version eventType hash position payload } }",
            json!({ "id": id }),
        )
        .await;
    let events = stream["stream"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["eventType"], "CarRegistered");
    assert_eq!(events[1]["eventType"], "DailyRateChanged");
    assert_eq!(events[1]["version"], 2);
    assert_eq!(events[0]["hash"].as_str().unwrap().len(), 64);
    // A page at a time: `first` events from `fromVersion`, the next from the last plus one.
    let page = |from: i32| {
        let (app, auditor, id) = (&app, auditor.clone(), id.clone());
        async move {
            app.ok(
                Some(&auditor),
                "query($id: String!, $f: Int!) { stream(aggregateType: \"car\", aggregateId: $id,
                    fromVersion: $f, first: 1) { version eventType } }",
                json!({ "id": id, "f": from }),
            )
            .await["stream"]
                .clone()
        }
    };
    assert_eq!(
        page(1).await,
        json!([{ "version": 1, "eventType": "CarRegistered" }])
    );
    assert_eq!(
        page(2).await,
        json!([{ "version": 2, "eventType": "DailyRateChanged" }])
    );
    assert_eq!(page(3).await, json!([]));
    let (_, body) = app
        .post(
            Some(&auditor),
            "query($id: String!) { stream(aggregateType: \"car\", aggregateId: $id, first: 0) {
                version } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{body:#}"
    );

    let state = |version: Option<i32>| {
        let app = &app;
        let auditor = auditor.clone();
        let id = id.clone();
        async move {
            app.ok(
                Some(&auditor),
                "query($id: String!, $v: Int) { aggregateState(aggregateType: \"car\", aggregateId: $id, atVersion: $v) }",
                json!({ "id": id, "v": version }),
            )
            .await["aggregateState"]
                .clone()
        }
    };
    let old = state(Some(1)).await;
    assert_eq!(old["version"], 1);
    assert_eq!(old["state"]["daily_rate"]["minor"], 5_000);
    let now = state(None).await;
    assert_eq!(now["version"], 2);
    assert_eq!(now["state"]["daily_rate"]["minor"], 6_000);

    let verified = app
        .ok(
            Some(&auditor),
            "query($id: String!) { verifyStream(aggregateType: \"car\", aggregateId: $id) \
             { valid events firstBrokenVersion } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(
        verified["verifyStream"],
        json!({ "valid": true, "events": 2, "firstBrokenVersion": null })
    );

    // The log in commit order, one event per page, resumed from each page's end cursor.
    let mut after: Option<String> = None;
    let mut seen = Vec::new();
    loop {
        let page = app
            .ok(
                Some(&auditor),
                "query($a: String) { events(afterPosition: $a, first: 1, filter: { aggregateTypes: [\"car\"] }) \
                 { edges { node { eventType aggregateId } } pageInfo { hasNextPage endCursor } } }",
                json!({ "a": after }),
            )
            .await;
        let page = &page["events"];
        for edge in page["edges"].as_array().unwrap() {
            seen.push(edge["node"]["eventType"].as_str().unwrap().to_owned());
        }
        if page["pageInfo"]["hasNextPage"] != true {
            break;
        }
        after = page["pageInfo"]["endCursor"].as_str().map(str::to_owned);
    }
    assert_eq!(seen, ["CarRegistered", "DailyRateChanged"]);

    app.shutdown().await;
}

async fn next_message(
    ws: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("the socket stays open")
            .expect("a valid frame");
        match msg {
            Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            Message::Close(frame) => panic!("socket closed: {frame:?}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn the_events_subscription_replays_then_streams_live_without_a_gap() {
    let app = TestApp::start().await;
    let admin = app.admin_token.clone();
    let integrator = app.user_with_role("device@example.com", "INTEGRATOR").await;
    app.add_branch("LIS", 38.7223, -9.1393).await;
    let first = app.add_car("LIS", "Fiat", "50.00").await;

    let mut request = format!("ws://{}/graphql", app.addr)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "graphql-transport-ws"
    );
    ws.send(Message::text(
        json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {integrator}") } })
            .to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next_message(&mut ws).await["type"], "connection_ack");
    ws.send(Message::text(
        json!({ "id": "1", "type": "subscribe", "payload": {
            "query": "subscription { events(afterPosition: \"0\", filter: { aggregateTypes: [\"car\"] }) \
                      { position eventType aggregateId } }" } })
        .to_string(),
    ))
    .await
    .unwrap();
    // Catch-up: the car registered before subscribing.
    let replayed = next_message(&mut ws).await;
    assert_eq!(replayed["type"], "next", "{replayed:#}");
    assert_eq!(
        replayed["payload"]["data"]["events"]["eventType"],
        "CarRegistered"
    );
    assert_eq!(
        replayed["payload"]["data"]["events"]["aggregateId"],
        first.to_string()
    );

    // Live: changes made now arrive in log order.
    let second = app.add_car("LIS", "Volvo", "80.00").await;
    app.ok(
        Some(&admin),
        "mutation($c: UUID!) { changeDailyRate(id: $c, dailyRate: \"55.00\") { id } }",
        json!({ "c": first }),
    )
    .await;
    let mut live = Vec::new();
    for _ in 0..2 {
        let msg = next_message(&mut ws).await;
        assert_eq!(msg["type"], "next", "{msg:#}");
        let e = &msg["payload"]["data"]["events"];
        live.push((
            e["eventType"].as_str().unwrap().to_owned(),
            e["aggregateId"].as_str().unwrap().to_owned(),
        ));
    }
    assert_eq!(
        live,
        [
            ("CarRegistered".to_owned(), second.to_string()),
            ("DailyRateChanged".to_owned(), first.to_string()),
        ]
    );
    ws.send(Message::text(
        json!({ "id": "1", "type": "complete" }).to_string(),
    ))
    .await
    .unwrap();
    ws.close(None).await.unwrap();

    // Without a token the subscription is refused.
    let mut request = format!("ws://{}/graphql", app.addr)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    ws.send(Message::text(
        json!({ "type": "connection_init" }).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next_message(&mut ws).await["type"], "connection_ack");
    ws.send(Message::text(
        json!({ "id": "1", "type": "subscribe", "payload": { "query": "subscription { events { position } }" } })
            .to_string(),
    ))
    .await
    .unwrap();
    let refused = next_message(&mut ws).await;
    assert_eq!(refused["type"], "next", "{refused:#}");
    assert!(refused["payload"]["data"].is_null(), "{refused:#}");
    assert_eq!(
        refused["payload"]["errors"][0]["extensions"]["code"],
        "UNAUTHENTICATED"
    );

    app.shutdown().await;
}

#[tokio::test]
async fn the_older_graphql_ws_protocol_is_served_too() {
    let app = TestApp::start().await;
    let auditor = app.user_with_role("audit@example.com", "AUDITOR").await;
    app.add_branch("LIS", 38.7223, -9.1393).await;
    let car = app.add_car("LIS", "Fiat", "50.00").await;
    let mut request = format!("ws://{}/graphql", app.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "graphql-ws".parse().unwrap());
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "graphql-ws");
    ws.send(Message::text(
        json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {auditor}") } })
            .to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next_message(&mut ws).await["type"], "connection_ack");
    ws.send(Message::text(
        json!({ "id": "1", "type": "start", "payload": {
            "query": "subscription { events(filter: { aggregateTypes: [\"car\"] }) { eventType aggregateId } }" } })
        .to_string(),
    ))
    .await
    .unwrap();
    let msg = loop {
        let msg = next_message(&mut ws).await;
        if msg["type"] != "ka" {
            break msg;
        }
    };
    assert_eq!(msg["type"], "data", "{msg:#}");
    assert_eq!(
        msg["payload"]["data"]["events"],
        json!({ "eventType": "CarRegistered", "aggregateId": car.to_string() })
    );
    app.shutdown().await;
}

//! Accounts and branches against a real PostgreSQL: registration, log-in, tokens, roles, the
//! bootstrap admin, profile changes, input validation; branch codes, lookups and listing.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use commands::accounts::{
    AccountError, Accounts, Bootstrap, Email, InvalidInput, JwtKeys, Password, ProfileUpdate,
    RegisterInput, Role, Secret,
};
use commands::branches::{Branch, BranchError, BranchInput, BranchPatch, Branches};
use eventstore::testing::TestDatabase;
use uuid::Uuid;

const SECRET: &str = "test-secret-of-at-least-32-bytes!!";
const PASSWORD: &str = "correct horse battery";

fn keys() -> JwtKeys {
    JwtKeys::new(&Secret::new(SECRET), Duration::from_secs(3_600)).unwrap()
}

fn accounts(db: &TestDatabase) -> Accounts {
    Accounts::new(db.pool.clone(), keys())
}

fn input(email: &str) -> RegisterInput {
    RegisterInput {
        email: email.into(),
        password: PASSWORD.into(),
        name: "Ada Lovelace".into(),
        phone: Some("+351 912 345 678".into()),
    }
}

fn field_of(err: AccountError) -> &'static str {
    match err {
        AccountError::Invalid(InvalidInput { field, .. }) => field,
        other => panic!("expected invalid input, got {other:?}"),
    }
}

async fn admins(db: &TestDatabase) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM users WHERE role = 'ADMIN'")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn register_then_log_in_with_a_token_for_the_user() {
    let db = TestDatabase::create().await;
    let accounts = accounts(&db);
    let registered = accounts
        .register(input("  Ada@Example.COM "))
        .await
        .unwrap();
    let user = &registered.user;
    assert_eq!(user.email, "ada@example.com", "trimmed and lower-cased");
    assert_eq!(user.name, "Ada Lovelace");
    assert_eq!(user.phone.as_deref(), Some("+351 912 345 678"));
    assert_eq!(user.role, Role::Customer);
    let claims = accounts.verify_token(&registered.token).unwrap();
    assert_eq!((claims.sub, claims.role), (user.id, Role::Customer));
    assert_eq!(claims.exp - claims.iat, 3_600);
    assert_eq!(registered.expires_at.timestamp(), claims.exp);

    let logged_in = accounts.login("ADA@example.com", PASSWORD).await.unwrap();
    assert_eq!(&logged_in.user, user);
    assert_eq!(
        accounts.verify_token(&logged_in.token).unwrap().sub,
        user.id
    );
    assert_eq!(accounts.get(user.id).await.unwrap().as_ref(), Some(user));
    assert_eq!(accounts.get(Uuid::now_v7()).await.unwrap(), None);
}

#[tokio::test]
async fn wrong_password_and_unknown_email_are_the_same_error() {
    let db = TestDatabase::create().await;
    let accounts = accounts(&db);
    accounts.register(input("ada@example.com")).await.unwrap();
    for (email, password) in [
        ("ada@example.com", "wrong password!"),
        ("nobody@example.com", PASSWORD),
        ("not an email", PASSWORD),
        ("ada@example.com", ""),
    ] {
        let err = accounts.login(email, password).await.unwrap_err();
        assert!(
            matches!(err, AccountError::InvalidCredentials),
            "{email}: {err:?}"
        );
        assert_eq!(err.to_string(), "invalid email or password");
    }
}

#[tokio::test]
async fn an_email_registers_once_whatever_its_case() {
    let db = TestDatabase::create().await;
    let accounts = accounts(&db);
    accounts.register(input("ada@example.com")).await.unwrap();
    let err = accounts
        .register(input("ADA@Example.com"))
        .await
        .unwrap_err();
    assert!(matches!(err, AccountError::EmailTaken), "{err:?}");
    // The index guards even a row written around the application.
    let raw = sqlx::query(
        "INSERT INTO users (id, email, name, role, password_hash) \
         VALUES ($1, 'ada@example.com', 'x', 'CUSTOMER', 'x')",
    )
    .bind(Uuid::now_v7())
    .execute(&db.pool)
    .await
    .unwrap_err();
    assert_eq!(
        raw.as_database_error().and_then(|d| d.constraint()),
        Some("users_email_key")
    );
}

#[tokio::test]
async fn passwords_are_stored_as_argon2id_hashes() {
    let db = TestDatabase::create().await;
    let accounts = accounts(&db);
    let user = accounts
        .register(input("ada@example.com"))
        .await
        .unwrap()
        .user;
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
        .bind(user.id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
    assert!(!hash.contains(PASSWORD));
    // A second account with the same password gets another salt.
    let other = accounts
        .register(input("bob@example.com"))
        .await
        .unwrap()
        .user;
    let other_hash: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
        .bind(other.id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_ne!(hash, other_hash);
}

#[tokio::test]
async fn expired_tampered_and_foreign_tokens_are_refused() {
    let db = TestDatabase::create().await;
    let accounts = accounts(&db);
    let payload = accounts.register(input("ada@example.com")).await.unwrap();
    let keys = keys();

    let (expired, _) = keys
        .issue(
            payload.user.id,
            Role::Customer,
            0,
            None,
            Utc::now() - TimeDelta::hours(2),
        )
        .unwrap();
    assert!(matches!(
        accounts.verify_token(&expired),
        Err(AccountError::TokenExpired)
    ));

    // The payload of an ADMIN token under the customer token's signature.
    let (admin, _) = keys
        .issue(payload.user.id, Role::Admin, 0, None, Utc::now())
        .unwrap();
    let customer: Vec<&str> = payload.token.split('.').collect();
    let admin: Vec<&str> = admin.split('.').collect();
    let spliced = format!("{}.{}.{}", customer[0], admin[1], customer[2]);
    assert!(matches!(
        accounts.verify_token(&spliced),
        Err(AccountError::InvalidToken)
    ));

    // The same claims signed with another secret.
    let foreign = JwtKeys::new(
        &Secret::new("another-secret-of-at-least-32-bytes"),
        Duration::from_secs(3_600),
    )
    .unwrap();
    let (forged, _) = foreign
        .issue(payload.user.id, Role::Admin, 0, None, Utc::now())
        .unwrap();
    assert!(matches!(
        accounts.verify_token(&forged),
        Err(AccountError::InvalidToken)
    ));

    // An unsigned token ("alg": "none") and garbage.
    let now = Utc::now().timestamp();
    let unsigned = format!(
        "{}.{}.",
        base64url(br#"{"alg":"none","typ":"JWT"}"#),
        base64url(
            format!(
                r#"{{"sub":"{}","role":"ADMIN","iat":{now},"exp":{}}}"#,
                payload.user.id,
                now + 3_600
            )
            .as_bytes()
        )
    );
    for token in [unsigned.as_str(), "", "a.b.c", "not a token"] {
        assert!(
            matches!(
                accounts.verify_token(token),
                Err(AccountError::InvalidToken)
            ),
            "{token}"
        );
    }
    assert!(accounts.verify_token(&payload.token).is_ok());
}

#[tokio::test]
async fn a_granted_role_shows_in_the_next_token() {
    let db = TestDatabase::create().await;
    let accounts = accounts(&db);
    let first = accounts.register(input("ada@example.com")).await.unwrap();
    let analyst = accounts
        .grant_role(first.user.id, Role::Analyst)
        .await
        .unwrap();
    assert_eq!(analyst.role, Role::Analyst);
    assert!(analyst.updated_at >= first.user.updated_at);
    let next = accounts.login("ada@example.com", PASSWORD).await.unwrap();
    assert_eq!(next.user.role, Role::Analyst);
    assert_eq!(
        accounts.verify_token(&next.token).unwrap().role,
        Role::Analyst
    );
    // A token carries the role it was issued with.
    assert_eq!(
        accounts.verify_token(&first.token).unwrap().role,
        Role::Customer
    );
    assert!(matches!(
        accounts.grant_role(Uuid::now_v7(), Role::Admin).await,
        Err(AccountError::NotFound)
    ));
}

#[tokio::test]
async fn bootstrap_creates_one_admin_however_often_it_runs() {
    let db = TestDatabase::create().await;
    let accounts = accounts(&db);
    let (a, b) = tokio::join!(
        accounts.bootstrap_admin("root@example.com", PASSWORD),
        accounts.bootstrap_admin("root@example.com", PASSWORD),
    );
    let outcomes = [a.unwrap(), b.unwrap()];
    let created: Vec<_> = outcomes
        .iter()
        .filter_map(|o| match o {
            Bootstrap::Created(user) => Some(user),
            Bootstrap::AdminExists => None,
        })
        .collect();
    assert_eq!(created.len(), 1, "{outcomes:?}");
    assert_eq!(created[0].role, Role::Admin);
    assert_eq!(admins(&db).await, 1);

    // Later start-ups, whatever the configured email, change nothing.
    assert_eq!(
        accounts
            .bootstrap_admin("root@example.com", PASSWORD)
            .await
            .unwrap(),
        Bootstrap::AdminExists
    );
    assert_eq!(
        accounts
            .bootstrap_admin("other@example.com", PASSWORD)
            .await
            .unwrap(),
        Bootstrap::AdminExists
    );
    assert_eq!(admins(&db).await, 1);
    let root = accounts.login("root@example.com", PASSWORD).await.unwrap();
    assert_eq!(
        accounts.verify_token(&root.token).unwrap().role,
        Role::Admin
    );
}

#[tokio::test]
async fn bootstrap_never_promotes_an_existing_account() {
    let db = TestDatabase::create().await;
    let accounts = accounts(&db);
    accounts.register(input("root@example.com")).await.unwrap();
    let err = accounts
        .bootstrap_admin("root@example.com", "the operator's password")
        .await
        .unwrap_err();
    assert!(matches!(err, AccountError::EmailTaken), "{err:?}");
    assert_eq!(admins(&db).await, 0);
    let err = accounts
        .bootstrap_admin("root@example.com", "short")
        .await
        .unwrap_err();
    assert_eq!(field_of(err), "password");
}

#[tokio::test]
async fn the_last_admin_keeps_the_role() {
    let db = TestDatabase::create().await;
    let accounts = accounts(&db);
    let Bootstrap::Created(root) = accounts
        .bootstrap_admin("root@example.com", PASSWORD)
        .await
        .unwrap()
    else {
        panic!("no admin created");
    };
    assert!(matches!(
        accounts.grant_role(root.id, Role::Customer).await,
        Err(AccountError::LastAdmin)
    ));
    let second = accounts
        .register(input("ada@example.com"))
        .await
        .unwrap()
        .user;
    accounts.grant_role(second.id, Role::Admin).await.unwrap();
    let demoted = accounts.grant_role(root.id, Role::Auditor).await.unwrap();
    assert_eq!(demoted.role, Role::Auditor);
    assert_eq!(admins(&db).await, 1);
}

#[tokio::test]
async fn profiles_change_field_by_field() {
    let db = TestDatabase::create().await;
    let accounts = accounts(&db);
    let user = accounts
        .register(input("ada@example.com"))
        .await
        .unwrap()
        .user;
    let renamed = accounts
        .update_profile(
            user.id,
            ProfileUpdate {
                name: Some("  Ada King ".into()),
                phone: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(renamed.name, "Ada King");
    assert_eq!(renamed.phone, user.phone, "no phone given: kept");
    assert!(renamed.updated_at > user.updated_at);
    assert_eq!(renamed.created_at, user.created_at);

    let new_phone = accounts
        .update_profile(
            user.id,
            ProfileUpdate {
                name: None,
                phone: Some("+44 20 7946 0000".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (new_phone.name.as_str(), new_phone.phone.as_deref()),
        ("Ada King", Some("+44 20 7946 0000"))
    );
    let cleared = accounts
        .update_profile(
            user.id,
            ProfileUpdate {
                name: None,
                phone: Some("  ".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(cleared.phone, None, "a blank phone removes it");

    let err = accounts
        .update_profile(
            user.id,
            ProfileUpdate {
                name: Some(" ".into()),
                phone: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(field_of(err), "name");
    let err = accounts
        .update_profile(
            user.id,
            ProfileUpdate {
                name: None,
                phone: Some("call me".into()),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(field_of(err), "phone");
    assert!(matches!(
        accounts
            .update_profile(Uuid::now_v7(), ProfileUpdate::default())
            .await,
        Err(AccountError::NotFound)
    ));
}

#[tokio::test]
async fn invalid_registrations_name_their_field_and_store_nothing() {
    let db = TestDatabase::create().await;
    let accounts = accounts(&db);
    let long_local = format!("{}@example.com", "a".repeat(250));
    let cases: Vec<(RegisterInput, &str)> = vec![
        (input("no-at-sign"), "email"),
        (input("two@@example.com"), "email"),
        (input("ada@localhost"), "email"),
        (input("ada @example.com"), "email"),
        (input(&long_local), "email"),
        (
            RegisterInput {
                password: "nine char".into(),
                ..input("a@example.com")
            },
            "password",
        ),
        (
            RegisterInput {
                password: "x".repeat(129),
                ..input("a@example.com")
            },
            "password",
        ),
        (
            RegisterInput {
                name: "   ".into(),
                ..input("a@example.com")
            },
            "name",
        ),
        (
            RegisterInput {
                name: "n".repeat(101),
                ..input("a@example.com")
            },
            "name",
        ),
        (
            RegisterInput {
                phone: Some("+351-912".into()),
                ..input("a@example.com")
            },
            "phone",
        ),
        (
            RegisterInput {
                phone: Some("1".repeat(33)),
                ..input("a@example.com")
            },
            "phone",
        ),
    ];
    for (case, field) in cases {
        let shown = format!("{case:?}");
        let err = accounts.register(case).await.unwrap_err();
        assert_eq!(field_of(err), field, "{shown}");
    }
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(users, 0);
    // Boundaries that are fine.
    assert!(Password::parse("x".repeat(10)).is_ok());
    assert!(Password::parse("é".repeat(128)).is_ok());
    assert_eq!(
        Email::parse("First.Last+tag@Mail.Example.org")
            .unwrap()
            .as_str(),
        "first.last+tag@mail.example.org"
    );
    assert!("SUPERUSER".parse::<Role>().is_err());
    assert_eq!("INTEGRATOR".parse::<Role>().unwrap(), Role::Integrator);
}

#[test]
fn secrets_never_print() {
    let secret = Secret::new(SECRET);
    assert!(!format!("{secret:?}").contains("test-secret"));
    assert!(!format!("{:?}", keys()).contains("test-secret"));
    let password = Password::parse(PASSWORD).unwrap();
    assert!(!format!("{password:?}").contains("horse"));
    assert!(!format!("{:?}", input("a@example.com")).contains("horse"));
    assert!(matches!(
        JwtKeys::new(&Secret::new("short"), Duration::from_secs(60)),
        Err(AccountError::WeakSecret { min_bytes: 32 })
    ));
    assert!(matches!(
        JwtKeys::new(&secret, Duration::ZERO),
        Err(AccountError::InvalidTtl)
    ));
}

/// Unpadded base64url, to build a token by hand.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

mod branches {
    use super::*;

    fn lisbon() -> BranchInput {
        BranchInput {
            code: "LIS-01".into(),
            name: "Lisbon Airport".into(),
            city: "Lisbon".into(),
            latitude: 38.7742,
            longitude: -9.1342,
            turnaround_minutes: None,
            currency: None,
        }
    }

    #[tokio::test]
    async fn branches_are_added_found_and_listed_by_code() {
        let db = TestDatabase::create().await;
        let branches = Branches::new(db.pool.clone());
        let lis = branches.add(lisbon()).await.unwrap();
        assert_eq!(
            (lis.code.as_str(), lis.latitude, lis.longitude),
            ("LIS-01", 38.7742, -9.1342)
        );
        let opo = branches
            .add(BranchInput {
                code: "OPO".into(),
                name: " Porto Campanhã ".into(),
                city: "Porto".into(),
                latitude: 41.1486,
                longitude: -8.5856,
                turnaround_minutes: None,
                currency: None,
            })
            .await
            .unwrap();
        assert_eq!(opo.name, "Porto Campanhã");
        let ams = branches
            .add(BranchInput {
                code: "AMS".into(),
                name: "Schiphol".into(),
                city: "Amsterdam".into(),
                latitude: 52.3105,
                longitude: 4.7683,
                turnaround_minutes: Some(90),
                currency: Some(domain::Currency::EUR),
            })
            .await
            .unwrap();
        // An hour unless the branch says otherwise.
        assert_eq!((lis.turnaround_minutes, ams.turnaround_minutes), (60, 90));
        // The fleet's currency unless the branch has its own.
        assert_eq!(
            (
                lis.currency_or(domain::Currency::USD),
                ams.currency_or(domain::Currency::USD)
            ),
            (domain::Currency::USD, domain::Currency::EUR)
        );
        assert_eq!(branches.get("LIS-01").await.unwrap(), Some(lis.clone()));
        assert_eq!(branches.get("lis-01").await.unwrap(), None);
        assert_eq!(branches.list().await.unwrap(), vec![ams, lis, opo]);
    }

    #[tokio::test]
    async fn a_branch_changes_its_name_and_turnaround_but_not_its_code() {
        let db = TestDatabase::create().await;
        let branches = Branches::new(db.pool.clone());
        let lis = branches.add(lisbon()).await.unwrap();
        let changed = branches
            .update(
                "LIS-01",
                BranchPatch {
                    turnaround_minutes: Some(0),
                    name: Some(" Lisbon Oriente ".into()),
                    ..BranchPatch::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(
            changed,
            Branch {
                name: "Lisbon Oriente".into(),
                turnaround_minutes: 0,
                ..lis
            }
        );
        for (minutes, field) in [(-1, "turnaroundMinutes"), (1441, "turnaroundMinutes")] {
            let err = branches
                .update(
                    "LIS-01",
                    BranchPatch {
                        turnaround_minutes: Some(minutes),
                        ..BranchPatch::default()
                    },
                )
                .await
                .unwrap_err();
            assert!(
                matches!(&err, BranchError::Invalid(i) if i.field == field),
                "{minutes}: {err:?}"
            );
        }
        let err = branches
            .add(BranchInput {
                code: "DAY".into(),
                turnaround_minutes: Some(24 * 60 + 1),
                ..lisbon()
            })
            .await
            .unwrap_err();
        assert!(matches!(err, BranchError::Invalid(_)), "{err:?}");
        let missing = branches
            .update("NOPE", BranchPatch::default())
            .await
            .unwrap_err();
        assert!(matches!(missing, BranchError::NotFound), "{missing:?}");
        assert_eq!(branches.get("LIS-01").await.unwrap(), Some(changed));
    }

    #[tokio::test]
    async fn a_code_is_taken_once() {
        let db = TestDatabase::create().await;
        let branches = Branches::new(db.pool.clone());
        branches.add(lisbon()).await.unwrap();
        let err = branches
            .add(BranchInput {
                name: "Another".into(),
                ..lisbon()
            })
            .await
            .unwrap_err();
        assert!(matches!(err, BranchError::CodeTaken), "{err:?}");
    }

    #[tokio::test]
    async fn invalid_branches_name_their_field() {
        let db = TestDatabase::create().await;
        let branches = Branches::new(db.pool.clone());
        let cases = [
            (
                BranchInput {
                    code: String::new(),
                    ..lisbon()
                },
                "code",
            ),
            (
                BranchInput {
                    code: "lis".into(),
                    ..lisbon()
                },
                "code",
            ),
            (
                BranchInput {
                    code: "LIS 1".into(),
                    ..lisbon()
                },
                "code",
            ),
            (
                BranchInput {
                    code: "A".repeat(17),
                    ..lisbon()
                },
                "code",
            ),
            (
                BranchInput {
                    name: " ".into(),
                    ..lisbon()
                },
                "name",
            ),
            (
                BranchInput {
                    city: "c".repeat(101),
                    ..lisbon()
                },
                "city",
            ),
            (
                BranchInput {
                    latitude: 90.5,
                    ..lisbon()
                },
                "position.latitude",
            ),
            (
                BranchInput {
                    latitude: f64::NAN,
                    ..lisbon()
                },
                "position.latitude",
            ),
            (
                BranchInput {
                    longitude: -180.1,
                    ..lisbon()
                },
                "position.longitude",
            ),
            (
                BranchInput {
                    longitude: f64::INFINITY,
                    ..lisbon()
                },
                "position.longitude",
            ),
        ];
        for (case, field) in cases {
            let shown = format!("{case:?}");
            match branches.add(case).await {
                Err(BranchError::Invalid(InvalidInput { field: f, .. })) => {
                    assert_eq!(f, field, "{shown}")
                }
                other => panic!("{shown}: {other:?}"),
            }
        }
        assert!(branches.list().await.unwrap().is_empty());
        // The 16-character limit is inclusive.
        let long = branches
            .add(BranchInput {
                code: "ABCDEFGHIJ-12345".into(),
                ..lisbon()
            })
            .await
            .unwrap();
        assert_eq!(long.code.len(), 16);
    }
}

/// The role a token's holder acts with now, or why it is refused.
async fn acting(accounts: &Accounts, token: &str) -> Result<Role, AccountError> {
    let claims = accounts.verify_token(token)?;
    accounts.session_role(&claims).await
}

#[tokio::test]
async fn refresh_tokens_rotate_and_a_reused_one_ends_the_session() {
    let db = TestDatabase::create().await;
    let accounts = accounts(&db);
    let before = Utc::now();
    let first = accounts
        .register(input("rotate@example.com"))
        .await
        .unwrap();
    let after = Utc::now();
    assert!(first.refresh_token.starts_with("flr_"));
    // A session lasts 30 days by default, from when it was opened (to the second).
    let ends = first.refresh_expires_at;
    assert!(
        ends.timestamp() >= (before + TimeDelta::days(30)).timestamp()
            && ends <= after + TimeDelta::days(30),
        "a session lasts 30 days by default: {before} .. {after} → {ends}"
    );
    // Stored as a hash, never in the clear.
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT secret_hash FROM refresh_tokens")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert!(!first.refresh_token.contains(&hex::encode(&stored[0])));

    // Rotation: a new access token and a new refresh token, same user, same session end.
    let second = accounts.refresh(&first.refresh_token).await.unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_eq!(second.user.id, first.user.id);
    assert_eq!(second.refresh_expires_at, first.refresh_expires_at);
    assert_eq!(
        acting(&accounts, &second.token).await.unwrap(),
        Role::Customer
    );
    let third = accounts.refresh(&second.refresh_token).await.unwrap();

    // The first one again (a thief, or a replay): the session ends, for everyone holding it.
    assert!(matches!(
        accounts.refresh(&first.refresh_token).await,
        Err(AccountError::RefreshTokenReused)
    ));
    assert!(matches!(
        accounts.refresh(&third.refresh_token).await,
        Err(AccountError::InvalidRefreshToken)
    ));
    for token in [&first.token, &second.token, &third.token] {
        assert!(matches!(
            acting(&accounts, token).await,
            Err(AccountError::SessionEnded)
        ));
    }
    let (reason,): (String,) = sqlx::query_as("SELECT revoked_reason FROM sessions")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(reason, "refresh token reused");

    // A new login is a new session, unaffected.
    let again = accounts
        .login("rotate@example.com", PASSWORD)
        .await
        .unwrap();
    assert_eq!(
        acting(&accounts, &again.token).await.unwrap(),
        Role::Customer
    );
    accounts.refresh(&again.refresh_token).await.unwrap();
}

#[tokio::test]
async fn forged_or_expired_refresh_tokens_are_refused_without_ending_the_session() {
    let db = TestDatabase::create().await;
    let accounts = accounts(&db);
    let signed_in = accounts.register(input("forge@example.com")).await.unwrap();
    let (id, secret) = signed_in
        .refresh_token
        .strip_prefix("flr_")
        .unwrap()
        .split_once('.')
        .unwrap();
    let wrong_secret = format!("flr_{id}.{}", "0".repeat(secret.len()));
    let unknown_id = format!("flr_{}.{secret}", Uuid::now_v7().simple());
    for forged in [
        "",
        "flr_",
        "flr_x.y",
        "Bearer nothing",
        wrong_secret.as_str(),
        unknown_id.as_str(),
        &signed_in.token,
    ] {
        assert!(
            matches!(
                accounts.refresh(forged).await,
                Err(AccountError::InvalidRefreshToken)
            ),
            "{forged}"
        );
    }
    // None of that was reuse: the real token still works.
    let next = accounts.refresh(&signed_in.refresh_token).await.unwrap();

    // Past the session's end nothing refreshes it.
    sqlx::query("UPDATE sessions SET expires_at = now() - interval '1 second'")
        .execute(&db.pool)
        .await
        .unwrap();
    assert!(matches!(
        accounts.refresh(&next.refresh_token).await,
        Err(AccountError::InvalidRefreshToken)
    ));
    assert!(matches!(
        acting(&accounts, &next.token).await,
        Err(AccountError::SessionEnded)
    ));
}

#[tokio::test]
async fn logout_ends_one_session_and_ending_all_ends_every_one() {
    let db = TestDatabase::create().await;
    let accounts = accounts(&db);
    let phone = accounts.register(input("two@example.com")).await.unwrap();
    let laptop = accounts.login("two@example.com", PASSWORD).await.unwrap();
    let claims = accounts.verify_token(&phone.token).unwrap();

    accounts
        .logout(
            phone.user.id,
            claims.sid.expect("tokens name their session"),
        )
        .await
        .unwrap();
    assert!(matches!(
        acting(&accounts, &phone.token).await,
        Err(AccountError::SessionEnded)
    ));
    assert!(matches!(
        accounts.refresh(&phone.refresh_token).await,
        Err(AccountError::InvalidRefreshToken)
    ));
    assert_eq!(
        acting(&accounts, &laptop.token).await.unwrap(),
        Role::Customer
    );

    // Someone else's session cannot be logged out by id.
    let other = accounts.register(input("other@example.com")).await.unwrap();
    let laptop_session = accounts.verify_token(&laptop.token).unwrap().sid.unwrap();
    accounts
        .logout(other.user.id, laptop_session)
        .await
        .unwrap();
    assert_eq!(
        acting(&accounts, &laptop.token).await.unwrap(),
        Role::Customer
    );

    accounts.end_sessions(laptop.user.id).await.unwrap();
    assert!(matches!(
        acting(&accounts, &laptop.token).await,
        Err(AccountError::SessionEnded)
    ));
    assert!(matches!(
        accounts.refresh(&laptop.refresh_token).await,
        Err(AccountError::InvalidRefreshToken)
    ));
    assert_eq!(
        acting(&accounts, &other.token).await.unwrap(),
        Role::Customer
    );
}

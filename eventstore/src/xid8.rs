//! PostgreSQL's `xid8` (a 64-bit transaction id) as a number on both sides of the wire.
//!
//! sqlx has no `xid8`, and the tempting workaround, `transaction_id::text` in SQL, turns the
//! id into a string that sorts "10000" before "9999": a reader that orders or compares such a
//! column applies events out of order and moves its checkpoint backwards each time the
//! cluster's transaction counter gains a digit. Every query binds and reads transaction ids
//! through [`Xid8`] instead, in PostgreSQL's binary format, so SQL only ever sees `xid8`
//! values and orders them as numbers.

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{
    PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueFormat, PgValueRef, Postgres,
};
use sqlx::{Decode, Encode, Type};

/// `pg_type.oid` of `xid8`; fixed by PostgreSQL since version 13.
const XID8_OID: Oid = Oid(5069);
/// `pg_type.oid` of `xid8[]`.
const XID8_ARRAY_OID: Oid = Oid(271);

/// A full (epoch-extended) PostgreSQL transaction id, bound and decoded as `xid8`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Xid8(pub u64);

impl From<u64> for Xid8 {
    fn from(value: u64) -> Self {
        Self(value)
    }
}

impl From<Xid8> for u64 {
    fn from(value: Xid8) -> Self {
        value.0
    }
}

impl Type<Postgres> for Xid8 {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(XID8_OID)
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        ty.oid() == Some(XID8_OID)
    }
}

impl PgHasArrayType for Xid8 {
    fn array_type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(XID8_ARRAY_OID)
    }

    fn array_compatible(ty: &PgTypeInfo) -> bool {
        ty.oid() == Some(XID8_ARRAY_OID)
    }
}

impl Encode<'_, Postgres> for Xid8 {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.extend_from_slice(&self.0.to_be_bytes());
        Ok(IsNull::No)
    }

    fn size_hint(&self) -> usize {
        8
    }
}

impl<'r> Decode<'r, Postgres> for Xid8 {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        match value.format() {
            PgValueFormat::Binary => {
                let bytes: [u8; 8] = value
                    .as_bytes()?
                    .try_into()
                    .map_err(|_| "an xid8 value is not 8 bytes long")?;
                Ok(Self(u64::from_be_bytes(bytes)))
            }
            PgValueFormat::Text => Ok(Self(value.as_str()?.parse()?)),
        }
    }
}

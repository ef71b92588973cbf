//! Hand-written SQL that Diesel prepares once per connection.
//!
//! `diesel::sql_query` never enters Diesel's prepared-statement cache, so PostgreSQL
//! parses, analyses and plans it on every call: a quarter of its work for the group
//! commits' bulk statements. Their text never changes (the rows travel as arrays), so
//! they are written with [`statement`] instead, which Diesel caches by its SQL text.
//!
//! Only for statements whose plan cannot go wrong as the tables grow (an insert from
//! `unnest`): PostgreSQL may switch a cached statement to a generic plan, chosen once.

use std::marker::PhantomData;

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{HasSqlType, Untyped};
use diesel::{PgConnection, QueryResult, RunQueryDsl};

/// A statement with placeholders `$1`, `$2`, ... in that order, each used once; bind
/// their values with [`Statement::bind`], in the same order.
pub fn statement(sql: &'static str) -> Statement<NoBinds> {
    Statement {
        sql,
        binds: NoBinds,
    }
}

/// A statement and its bound values; run it as a `sql_query` (`execute`, `load`).
#[derive(Debug)]
pub struct Statement<B> {
    sql: &'static str,
    binds: B,
}

impl<B: Binds> Statement<B> {
    /// Binds the next placeholder to `value`, sent as SQL type `ST`.
    pub fn bind<ST, V>(self, value: V) -> Statement<Bound<B, ST, V>> {
        Statement {
            sql: self.sql,
            binds: Bound {
                previous: self.binds,
                value,
                sql_type: PhantomData,
            },
        }
    }
}

/// No value bound yet.
#[derive(Debug)]
pub struct NoBinds;

/// The values bound so far, and one more.
#[derive(Debug)]
pub struct Bound<P, ST, V> {
    previous: P,
    value: V,
    sql_type: PhantomData<ST>,
}

/// The bound values of a [`Statement`], written between the SQL text's pieces.
pub trait Binds {
    /// How many values are bound.
    const COUNT: usize;

    /// Writes `pieces[0]`, then each value followed by the next piece.
    fn walk<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>, pieces: &[&str]) -> QueryResult<()>;
}

impl Binds for NoBinds {
    const COUNT: usize = 0;

    fn walk<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>, pieces: &[&str]) -> QueryResult<()> {
        out.push_sql(pieces[0]);
        Ok(())
    }
}

impl<P, ST, V> Binds for Bound<P, ST, V>
where
    P: Binds,
    Pg: HasSqlType<ST>,
    V: diesel::serialize::ToSql<ST, Pg>,
{
    const COUNT: usize = P::COUNT + 1;

    fn walk<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>, pieces: &[&str]) -> QueryResult<()> {
        self.previous.walk(out, pieces)?;
        // Pg's query builder writes `$n` itself, numbered in order.
        out.push_bind_param::<ST, V>(&self.value)?;
        out.push_sql(pieces[Self::COUNT]);
        Ok(())
    }
}

/// The SQL text around its placeholders, checked to be `$1`..`$count` in order.
fn pieces(sql: &str, count: usize) -> QueryResult<Vec<&str>> {
    let mut pieces = Vec::with_capacity(count + 1);
    let mut rest = sql;
    for n in 1..=count {
        let marker = format!("${n}");
        let at = rest
            .find(&marker)
            .filter(|at| !rest[at + marker.len()..].starts_with(|c: char| c.is_ascii_digit()))
            .ok_or_else(|| {
                diesel::result::Error::QueryBuilderError(
                    format!("placeholder {marker} is missing or out of order in: {sql}").into(),
                )
            })?;
        pieces.push(&rest[..at]);
        rest = &rest[at + marker.len()..];
    }
    if rest.contains(&format!("${}", count + 1)) {
        return Err(diesel::result::Error::QueryBuilderError(
            format!("more placeholders than the {count} values bound in: {sql}").into(),
        ));
    }
    pieces.push(rest);
    Ok(pieces)
}

impl<B: Binds> QueryFragment<Pg> for Statement<B> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let pieces = pieces(self.sql, B::COUNT)?;
        self.binds.walk(&mut out, &pieces)
    }
}

// No static id: Diesel's cache keys the statement by its SQL text.
impl<B> QueryId for Statement<B> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<B> Query for Statement<B> {
    type SqlType = Untyped;
}

impl<B> RunQueryDsl<PgConnection> for Statement<B> {}

#[cfg(test)]
mod tests {
    use super::pieces;

    #[test]
    fn placeholders_split_the_text_in_order() {
        assert_eq!(
            pieces("SELECT $1, $2 FROM t WHERE a = $3", 3).unwrap(),
            ["SELECT ", ", ", " FROM t WHERE a = ", ""]
        );
        assert_eq!(pieces("SELECT 1", 0).unwrap(), ["SELECT 1"]);
        assert!(pieces("SELECT $2, $1", 2).is_err(), "out of order");
        assert!(pieces("SELECT $1, $2", 1).is_err(), "unbound placeholder");
        assert!(
            pieces("SELECT $1", 2).is_err(),
            "value without a placeholder"
        );
        assert!(pieces("SELECT $10", 1).is_err(), "$1 is not $10");
    }
}

//! Stripe's form encoding with bracket syntax: `metadata[k]=v`, `items[0][price]=x`,
//! `expand[]=a`. Pairs come from serde_urlencoded; this builds the nested tree.

use std::collections::BTreeMap;

use crate::error::ApiError;

/// One parameter: a scalar or a hash (arrays are hashes with index keys, as Rack sees them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    Value(String),
    Hash(BTreeMap<String, Param>),
}

/// A request's parameters, query string and body merged.
#[derive(Debug, Clone, Default)]
pub struct Params {
    pairs: Vec<(String, String)>,
    root: BTreeMap<String, Param>,
}

/// Splits `a[b][]` into `["a", "b", ""]`; a key with unbalanced brackets stays whole.
fn segments(key: &str) -> Vec<&str> {
    let Some(open) = key.find('[') else {
        return vec![key];
    };
    let mut out = vec![&key[..open]];
    let mut rest = &key[open..];
    while !rest.is_empty() {
        let close = match (rest.strip_prefix('['), rest.find(']')) {
            (Some(_), Some(close)) => close,
            _ => return vec![key],
        };
        out.push(&rest[1..close]);
        rest = &rest[close + 1..];
    }
    out
}

impl Params {
    /// Builds the tree; a key that is both a scalar and a hash is a 400.
    pub fn parse(pairs: Vec<(String, String)>) -> Result<Self, ApiError> {
        let mut root = BTreeMap::new();
        for (key, value) in &pairs {
            let segs = segments(key);
            insert(&mut root, &segs, value.clone())
                .map_err(|()| ApiError::invalid(format!("Invalid hash: {key}")).param(segs[0]))?;
        }
        Ok(Self { pairs, root })
    }

    /// A canonical form of the parameters, to tell whether a retry sent the same request.
    pub fn fingerprint(&self) -> String {
        let mut pairs = self.pairs.clone();
        pairs.sort();
        serde_urlencoded::to_string(&pairs).unwrap_or_default()
    }

    /// 400 `parameter_unknown` for the first top-level name not in `allowed`.
    pub fn allow(&self, allowed: &[&str]) -> Result<(), ApiError> {
        match self.root.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(unknown) => Err(ApiError::unknown_parameter(unknown)),
            None => Ok(()),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Param> {
        self.root.get(name)
    }

    /// A scalar; a hash where a string is expected is a 400.
    pub fn str(&self, name: &str) -> Result<Option<&str>, ApiError> {
        match self.root.get(name) {
            None => Ok(None),
            Some(Param::Value(v)) => Ok(Some(v)),
            Some(Param::Hash(_)) => Err(ApiError::invalid("Invalid string: {...}").param(name)),
        }
    }

    /// A required non-empty scalar.
    pub fn required(&self, name: &str) -> Result<&str, ApiError> {
        match self.str(name)? {
            Some(v) if !v.is_empty() => Ok(v),
            Some(_) => Err(ApiError::invalid(format!(
                "You passed an empty string for '{name}'. We assume empty values are an attempt \
                 to unset a parameter; however '{name}' cannot be unset. You should remove \
                 '{name}' from your request or supply a non-empty value."
            ))
            .code("parameter_invalid_empty")
            .param(name)),
            None => Err(ApiError::missing_parameter(name)),
        }
    }

    /// An integer parameter.
    pub fn int(&self, name: &str) -> Result<Option<i64>, ApiError> {
        match self.str(name)? {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                ApiError::invalid(format!("Invalid integer: {v}"))
                    .code("parameter_invalid_integer")
                    .param(name)
            }),
        }
    }

    /// A boolean parameter (`true`/`false`, as the SDKs send them).
    pub fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.str(name)? {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(v) => Err(ApiError::invalid(format!("Invalid boolean: {v}")).param(name)),
        }
    }

    /// One of a fixed set of strings.
    pub fn one_of(&self, name: &str, allowed: &[&str]) -> Result<Option<String>, ApiError> {
        match self.str(name)? {
            None => Ok(None),
            Some(v) if allowed.contains(&v) => Ok(Some(v.to_owned())),
            Some(v) => Err(ApiError::invalid(format!(
                "Invalid {name}: must be one of {}",
                allowed.join(", ")
            ))
            .param(name)
            .code(if v.is_empty() {
                "parameter_invalid_empty"
            } else {
                "parameter_invalid_string"
            })),
        }
    }

    /// A list (`k[0]=a&k[1]=b` or `k[]=a`); `k=` is the empty list.
    pub fn list(&self, name: &str) -> Result<Option<Vec<String>>, ApiError> {
        match self.root.get(name) {
            None => Ok(None),
            Some(Param::Value(v)) if v.is_empty() => Ok(Some(Vec::new())),
            Some(Param::Value(_)) => Err(ApiError::invalid("Invalid array").param(name)),
            Some(Param::Hash(items)) => {
                let mut indexed: Vec<(usize, &Param)> = Vec::new();
                for (k, v) in items {
                    let i = k
                        .parse()
                        .map_err(|_| ApiError::invalid("Invalid array").param(name))?;
                    indexed.push((i, v));
                }
                indexed.sort_by_key(|(i, _)| *i);
                indexed
                    .into_iter()
                    .map(|(_, v)| match v {
                        Param::Value(s) => Ok(s.clone()),
                        Param::Hash(_) => Err(ApiError::invalid("Invalid array").param(name)),
                    })
                    .collect::<Result<_, _>>()
                    .map(Some)
            }
        }
    }
}

fn insert(map: &mut BTreeMap<String, Param>, segs: &[&str], value: String) -> Result<(), ()> {
    let key = match segs[0] {
        // `k[]` appends.
        "" => map.len().to_string(),
        k => k.to_owned(),
    };
    if segs.len() == 1 {
        return match map.get(&key) {
            Some(Param::Hash(_)) => Err(()),
            _ => {
                map.insert(key, Param::Value(value));
                Ok(())
            }
        };
    }
    match map
        .entry(key)
        .or_insert_with(|| Param::Hash(BTreeMap::new()))
    {
        Param::Hash(inner) => insert(inner, &segs[1..], value),
        Param::Value(_) => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Params {
        Params::parse(serde_urlencoded::from_str(s).unwrap()).unwrap()
    }

    #[test]
    fn brackets_nest_and_empty_brackets_append() {
        let p = parse("name=Ann&metadata[a]=1&metadata[b]=&expand[]=x&expand[]=y&a[b][c]=d");
        assert_eq!(p.str("name").unwrap(), Some("Ann"));
        let Some(Param::Hash(meta)) = p.get("metadata") else {
            panic!()
        };
        assert_eq!(meta.get("b"), Some(&Param::Value(String::new())));
        assert_eq!(p.list("expand").unwrap().unwrap(), ["x", "y"]);
        let Some(Param::Hash(a)) = p.get("a") else {
            panic!()
        };
        assert!(matches!(a.get("b"), Some(Param::Hash(_))));
    }

    #[test]
    fn lists_sort_by_numeric_index() {
        let mut s = String::new();
        for i in (0..12).rev() {
            s.push_str(&format!("l[{i}]=v{i}&"));
        }
        let p = parse(&s);
        let list = p.list("l").unwrap().unwrap();
        assert_eq!(list[2], "v2");
        assert_eq!(list[11], "v11");
    }

    #[test]
    fn a_scalar_and_a_hash_under_one_name_is_rejected() {
        let pairs = serde_urlencoded::from_str("metadata=x&metadata[a]=1").unwrap();
        assert_eq!(Params::parse(pairs).unwrap_err().status, 400);
    }

    #[test]
    fn unbalanced_brackets_keep_the_key_whole() {
        let p = parse("a[b=1");
        assert_eq!(p.str("a[b").unwrap(), Some("1"));
        assert!(p.allow(&["a"]).is_err());
    }

    #[test]
    fn the_fingerprint_ignores_order_but_not_values() {
        assert_eq!(
            parse("a=1&b=2").fingerprint(),
            parse("b=2&a=1").fingerprint()
        );
        assert_ne!(
            parse("a=1&b=2").fingerprint(),
            parse("a=1&b=3").fingerprint()
        );
    }
}

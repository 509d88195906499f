//! The example configuration (`sipshard.toml` at the top of the repository) against the config
//! file struct: it goes through the same code path as `--config` and yields the defaults; it
//! names every key `FileConfig` accepts (a key added to the struct but not to the example fails
//! here); and `--help` names every flag and every key that has no flag.

use super::*;
use clap::CommandFactory;
use serde::de::value::Error as DeError;
use serde::de::{DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, Visitor};
use std::collections::BTreeSet;

fn example_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sipshard.toml")
}

/// A serde Deserializer that yields placeholder values and records the field names serde
/// hands to `deserialize_struct`, walking into nested structs: the keys of the file struct as
/// dotted paths, read from the struct itself (no list to keep up to date by hand).
struct Keys<'a> {
    prefix: String,
    out: &'a mut BTreeSet<String>,
}

impl<'de> Deserializer<'de> for Keys<'_> {
    type Error = DeError;
    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_unit()
    }
    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_some(self)
    }
    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_bool(false)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_u64(0)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_u64(0)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_u64(0)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_u64(0)
    }
    fn deserialize_i8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_i64(0)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_i64(0)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_i64(0)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_i64(0)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_f64(0.0)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_f64(0.0)
    }
    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_str("")
    }
    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_str("")
    }
    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        // One element: an array of tables (`[[trunk]]`) names its fields under its own key.
        v.visit_seq(OneElement(Some(Keys {
            prefix: self.prefix,
            out: self.out,
        })))
    }
    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        // A free-form table (`[classes]`): its keys are the operator's.
        self.out.insert(format!("{}.*", self.prefix));
        v.visit_map(serde::de::value::MapDeserializer::<_, DeError>::new(
            std::iter::empty::<(u8, u8)>(),
        ))
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        v.visit_map(Fields {
            prefix: self.prefix,
            fields,
            next: 0,
            out: self.out,
        })
    }
    serde::forward_to_deserialize_any! {
        char bytes byte_buf unit unit_struct newtype_struct tuple tuple_struct enum
        identifier ignored_any
    }
}

/// A sequence of one placeholder element.
struct OneElement<'a>(Option<Keys<'a>>);

impl<'de> serde::de::SeqAccess<'de> for OneElement<'_> {
    type Error = DeError;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.0.take() {
            Some(keys) => seed.deserialize(keys).map(Some),
            None => Ok(None),
        }
    }
}

struct Fields<'a> {
    prefix: String,
    fields: &'static [&'static str],
    next: usize,
    out: &'a mut BTreeSet<String>,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = DeError;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        match self.fields.get(self.next) {
            Some(f) => seed
                .deserialize(IntoDeserializer::<DeError>::into_deserializer(*f))
                .map(Some),
            None => Ok(None),
        }
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let f = self.fields[self.next];
        self.next += 1;
        let path = if self.prefix.is_empty() {
            f.to_string()
        } else {
            format!("{}.{f}", self.prefix)
        };
        self.out.insert(path.clone());
        seed.deserialize(Keys {
            prefix: path,
            out: &mut *self.out,
        })
    }
}

/// Every key of the config file struct, nested ones as `table.key`.
fn struct_keys() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    FileConfig::deserialize(Keys {
        prefix: String::new(),
        out: &mut out,
    })
    .expect("introspect FileConfig");
    out
}

/// Every key of a TOML table, nested ones as `table.key`.
fn toml_keys(prefix: &str, t: &toml::Table, out: &mut BTreeSet<String>) {
    for (k, v) in t {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(sub) => toml_keys(&path, sub, out),
            toml::Value::Array(items) => {
                for item in items {
                    if let toml::Value::Table(sub) = item {
                        toml_keys(&path, sub, out);
                    }
                }
            }
            _ => {}
        }
        out.insert(path);
    }
}

/// `have` with the keys of free-form tables (`classes.alice`) written as `classes.*`, the way
/// [`struct_keys`] names them.
fn free_form(want: &BTreeSet<String>, have: BTreeSet<String>) -> BTreeSet<String> {
    have.into_iter()
        .map(|k| {
            match want
                .iter()
                .filter_map(|w| w.strip_suffix(".*"))
                .find(|table| k.starts_with(&format!("{table}.")))
            {
                Some(table) => format!("{table}.*"),
                None => k,
            }
        })
        .collect()
}

/// The example with its commented-out settings (`#key = value` lines and `#[table]` headers)
/// enabled.
fn example_all_enabled() -> String {
    let text = std::fs::read_to_string(example_path()).unwrap();
    text.lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if rest.starts_with('[') && rest.ends_with(']') => rest,
            Some(rest)
                if rest.split_once(" = ").is_some_and(|(k, _)| {
                    !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                }) =>
            {
                rest
            }
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn example_config_is_the_defaults_through_the_config_flag() {
    let path = example_path();
    let with = Cli::try_parse_from(["sipshard", "--config", path.to_str().unwrap()])
        .unwrap()
        .into_config()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let without = Cli::try_parse_from(["sipshard"])
        .unwrap()
        .into_config()
        .unwrap();
    // Every value in the example is the default it documents (shards and the commented
    // settings are left at their defaults): the same configuration as no file at all.
    assert_eq!(format!("{with:?}"), format!("{without:?}"));
    assert_eq!(with.listen[0].addr, "127.0.0.1:5060".parse().unwrap());
}

#[test]
fn example_config_names_every_key_of_the_file_struct() {
    let want = struct_keys();
    assert!(want.contains("registrar.min_expires") && want.contains("proxy.forking"));
    let text = example_all_enabled();
    // The commented-out settings are valid too, once enabled.
    toml::from_str::<FileConfig>(&text)
        .unwrap_or_else(|e| panic!("sipshard.toml with every setting enabled: {e}"));
    let mut have = BTreeSet::new();
    toml_keys("", &text.parse::<toml::Table>().unwrap(), &mut have);
    let have = free_form(&want, have);
    let missing: Vec<_> = want.difference(&have).collect();
    assert!(
        missing.is_empty(),
        "sipshard.toml lacks {missing:?}: add each, with its default and one line on what it \
         does (commented out as `#key = value` where no value is neutral)"
    );
    assert_eq!(have, want);
}

/// The dial plan's sections (`crate::routing::spec`).
const DIAL_PLAN_SECTIONS: [&str; 10] = [
    "extension",
    "normalize",
    "trunk",
    "route",
    "rate",
    "routing",
    "classes",
    "emergency",
    "group",
    "paging",
];

#[test]
fn help_names_every_flag_and_every_file_only_key() {
    let mut cmd = Cli::command();
    let help = cmd.render_long_help().to_string();
    let longs: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect();
    for l in &longs {
        assert!(help.contains(&format!("--{l}")), "--help lacks --{l}");
    }
    assert!(help.contains("sipshard.toml"), "{help}");
    let keys = struct_keys();
    for key in &keys {
        let is_table = keys.iter().any(|k| k.starts_with(&format!("{key}.")));
        // The dial plan's sections are named as sections.
        let section = key.split('.').next().unwrap();
        if DIAL_PLAN_SECTIONS.contains(&section) {
            assert!(
                help.contains(&format!("[{section}]")) || help.contains(&format!("[[{section}]]")),
                "--help does not name the section of {key}"
            );
            continue;
        }
        let flag = key.rsplit('.').next().unwrap().replace('_', "-");
        let has_flag = longs.contains(&flag) || longs.contains(&format!("no-{flag}"));
        if !is_table && !has_flag {
            assert!(
                help.contains(key.as_str()),
                "--help does not name the key {key}"
            );
        }
    }
}

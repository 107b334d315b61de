//! A JSON document seen by templates in place: [`view`] wraps it in a minijinja value whose
//! maps and lists are read from the JSON when a template looks into them, instead of being
//! converted whole first.
//!
//! An XLSX export's context may hold 100,000 rows; converted with `Value::from(Serde(..))`
//! it became a second copy of the context, larger than the JSON itself (minijinja's maps
//! are keyed by values and reference-counted), and the largest thing in a worker's memory.
//! Here a map or a list is a reference to its place in the one shared JSON document; only
//! the scalars a template reads are made into values.

use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectRepr, Value};

/// The template value for `json`.
pub fn view(json: serde_json::Value) -> Value {
    let root = Arc::new(json);
    at(&root, Vec::new())
}

/// One step from a map or list to a value inside it.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

/// A map or list: the document, and the path from its root.
#[derive(Debug)]
struct Place {
    root: Arc<serde_json::Value>,
    path: Vec<Step>,
}

impl Place {
    fn json(&self) -> &serde_json::Value {
        self.path
            .iter()
            .fold(&*self.root, |value, step| match step {
                Step::Key(key) => &value[key.as_str()],
                Step::Index(index) => &value[*index],
            })
    }

    fn child(&self, step: Step) -> Value {
        let mut path = self.path.clone();
        path.push(step);
        at(&self.root, path)
    }
}

/// The value at `path`: a scalar converted, a map or list wrapped.
fn at(root: &Arc<serde_json::Value>, path: Vec<Step>) -> Value {
    let place = Place {
        root: root.clone(),
        path,
    };
    match place.json() {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(u)) => Value::from(u),
            _ => Value::from(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(_) | serde_json::Value::Object(_) => Value::from_object(place),
    }
}

impl Object for Place {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        match self.json() {
            serde_json::Value::Array(_) => ObjectRepr::Seq,
            _ => ObjectRepr::Map,
        }
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match self.json() {
            serde_json::Value::Array(items) => {
                let index = key.as_usize()?;
                (index < items.len()).then(|| self.child(Step::Index(index)))
            }
            serde_json::Value::Object(map) => {
                let key = key.as_str()?;
                map.contains_key(key)
                    .then(|| self.child(Step::Key(key.to_owned())))
            }
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        match self.json() {
            serde_json::Value::Array(items) => Enumerator::Seq(items.len()),
            serde_json::Value::Object(map) => {
                Enumerator::Values(map.keys().map(|k| Value::from(k.as_str())).collect())
            }
            _ => Enumerator::Empty,
        }
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        match self.json() {
            serde_json::Value::Array(items) => Some(items.len()),
            serde_json::Value::Object(map) => Some(map.len()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Whatever a template does with the view, it gets what the converted JSON gives.
    #[test]
    fn a_view_renders_like_the_converted_json() {
        let context = json!({
            "inline_context": {
                "rows": [{"n": 1, "name": "a"}, {"n": 2, "name": "b"}],
                "big": 18446744073709551615u64, "neg": -3, "pi": 3.5, "ok": true, "none": null,
                "nested": {"z": [1, [2, 3]], "a": "x"}
            }
        });
        let env = minijinja::Environment::new();
        for source in [
            "{% for r in inline_context.rows %}{{ loop.index }}:{{ r.n }}{{ r.name }};{% endfor %}",
            "{{ inline_context.rows|length }} {{ inline_context.rows[1].name }} {{ inline_context.rows[5] is undefined }}",
            "{{ inline_context.big }} {{ inline_context.neg }} {{ inline_context.pi }} {{ inline_context.ok }} {{ inline_context.none }}",
            "{% for k, v in inline_context.nested|dictsort %}{{ k }}={{ v }};{% endfor %}",
            "{{ inline_context.nested.z[1][0] }} {{ inline_context.rows|map(attribute='n')|sum }}",
            "{{ inline_context.nested|tojson }} {{ inline_context.missing is undefined }}",
            "{% if inline_context.rows %}yes{% endif %}{% if inline_context.nested.z %}z{% endif %}",
        ] {
            let template = env.template_from_str(source).unwrap();
            let converted = template
                .render(Value::from(minijinja::value::Serde(&context)))
                .unwrap();
            let viewed = template.render(view(context.clone())).unwrap();
            assert_eq!(viewed, converted, "{source}");
        }
    }
}

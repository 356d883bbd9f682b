//! Validation of JSON bodies against the 3GPP OpenAPI files (feature `schema`, for tests).
//!
//! [`SchemaSet::load`] reads every `*.yaml` file of a directory, takes its
//! `components/schemas`, and turns all of them into one JSON Schema (draft 4) document:
//! `$ref`s across files (`TS29571_CommonData.yaml#/components/schemas/DateTime`) and within a
//! file (`#/components/schemas/X`) point into that document, and OpenAPI 3.0's `nullable: true`
//! becomes `anyOf: [{type: null}, …]`. Formats are asserted where JSON Schema defines them
//! (`date-time`); OpenAPI-only formats (`int32`, `byte`, …) are ignored.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use model::schema::{names, SchemaSet};
//! let schemas = SchemaSet::load(SchemaSet::default_dir())?;
//! let body = serde_json::json!({"notifId": "n-1", "eventNotifs": []});
//! assert!(schemas.validate(names::NSMF_EVENT_EXPOSURE_NOTIFICATION, &body).is_err());
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{json, Map, Value};

/// Environment variable naming the directory of the 3GPP OpenAPI files.
pub const DIR_ENV: &str = "TESTBED_3GPP_DIR";

/// Names of the schemas this project's bodies use, for [`SchemaSet::validate`].
pub mod names {
    /// Subscription request and 201 response body.
    pub const NSMF_EVENT_EXPOSURE: &str =
        "TS29508_Nsmf_EventExposure.yaml#/components/schemas/NsmfEventExposure";
    /// Notification body POSTed to `notifUri`.
    pub const NSMF_EVENT_EXPOSURE_NOTIFICATION: &str =
        "TS29508_Nsmf_EventExposure.yaml#/components/schemas/NsmfEventExposureNotification";
    /// One subscribed event.
    pub const EVENT_SUBSCRIPTION: &str =
        "TS29508_Nsmf_EventExposure.yaml#/components/schemas/EventSubscription";
    /// One reported event.
    pub const EVENT_NOTIFICATION: &str =
        "TS29508_Nsmf_EventExposure.yaml#/components/schemas/EventNotification";
    /// Error body.
    pub const PROBLEM_DETAILS: &str = "TS29571_CommonData.yaml#/components/schemas/ProblemDetails";
    /// Traffic routing at one DNAI.
    pub const ROUTE_TO_LOCATION: &str =
        "TS29571_CommonData.yaml#/components/schemas/RouteToLocation";
    /// The AF's acknowledgement of an Nsmf_EventExposure notification, POSTed to `ackUri`.
    pub const ACK_OF_NOTIFY: &str =
        "TS29508_Nsmf_EventExposure.yaml#/components/schemas/AckOfNotify";
    /// A traffic influence subscription at the NEF (request, 201 and 200 bodies).
    pub const TRAFFIC_INFLU_SUB: &str =
        "TS29522_TrafficInfluence.yaml#/components/schemas/TrafficInfluSub";
    /// A `PATCH` of a traffic influence subscription.
    pub const TRAFFIC_INFLU_SUB_PATCH: &str =
        "TS29522_TrafficInfluence.yaml#/components/schemas/TrafficInfluSubPatch";
    /// The NEF's notification to `notificationDestination`.
    pub const TRAFFIC_INFLUENCE_NOTIFICATION: &str =
        "TS29522_TrafficInfluence.yaml#/components/schemas/EventNotification";
    /// The AF's acknowledgement, POSTed to `afAckUri`.
    pub const AF_ACK_INFO: &str = "TS29522_TrafficInfluence.yaml#/components/schemas/AfAckInfo";
    /// The AF's result in an acknowledgement.
    pub const AF_RESULT_INFO: &str =
        "TS29522_TrafficInfluence.yaml#/components/schemas/AfResultInfo";
    /// One IP flow and its packet filters (TS 29.122).
    pub const FLOW_INFO: &str = "TS29122_CommonData.yaml#/components/schemas/FlowInfo";
    /// A traffic control policy the SMF takes (TS 29.512).
    pub const TRAFFIC_CONTROL_DATA: &str =
        "TS29512_Npcf_SMPolicyControl.yaml#/components/schemas/TrafficControlData";
    /// Its subscription to `UP_PATH_CH` (TS 29.512).
    pub const UP_PATH_CHG_EVENT: &str =
        "TS29512_Npcf_SMPolicyControl.yaml#/components/schemas/UpPathChgEvent";
}

/// Prefix of a JSON pointer to a schema in an OpenAPI file.
const SCHEMAS_POINTER: &str = "/components/schemas/";

/// Why the OpenAPI files could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The directory is missing.
    #[error("3GPP OpenAPI directory {} does not exist (set {DIR_ENV})", .0.display())]
    MissingDir(PathBuf),
    /// The directory holds no OpenAPI file.
    #[error("no *.yaml file in {}", .0.display())]
    NoFiles(PathBuf),
    /// A file or the directory could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file is not YAML.
    #[error("cannot parse {}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_norway::Error,
    },
    /// A file's schemas are not representable as JSON.
    #[error("schemas of {} are not JSON", path.display())]
    NotJson {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A `$ref` does not name a schema of a loaded file.
    #[error("{file}: $ref {reference} does not name a loaded schema")]
    UnresolvedRef {
        /// The file holding the reference.
        file: String,
        /// The reference.
        reference: String,
    },
}

/// All schemas of a directory of OpenAPI files, as one JSON Schema document.
pub struct SchemaSet {
    dir: PathBuf,
    /// `{file: {"definitions": {name: schema}}}`.
    definitions: Map<String, Value>,
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

impl fmt::Debug for SchemaSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchemaSet")
            .field("dir", &self.dir)
            .field("files", &self.definitions.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl SchemaSet {
    /// `$TESTBED_3GPP_DIR`, else `shared/3gpp` beside this workspace.
    pub fn default_dir() -> PathBuf {
        std::env::var_os(DIR_ENV).map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/3gpp"),
            PathBuf::from,
        )
    }

    /// Loads every `*.yaml` file of `dir` and checks that every `$ref` resolves.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, SchemaError> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(SchemaError::MissingDir(dir.to_owned()));
        }
        let read_dir_error = |source| SchemaError::Read {
            path: dir.to_owned(),
            source,
        };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(read_dir_error)? {
            let path = entry.map_err(read_dir_error)?.path();
            if path.extension().is_some_and(|ext| ext == "yaml") {
                paths.push(path);
            }
        }
        if paths.is_empty() {
            return Err(SchemaError::NoFiles(dir.to_owned()));
        }

        let mut definitions = Map::new();
        let mut refs = Vec::new();
        for path in paths {
            let file = path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default();
            let text = std::fs::read_to_string(&path).map_err(|source| SchemaError::Read {
                path: path.clone(),
                source,
            })?;
            let document: serde_norway::Value =
                serde_norway::from_str(&text).map_err(|source| SchemaError::Parse {
                    path: path.clone(),
                    source,
                })?;
            let schemas = match document.get("components").and_then(|c| c.get("schemas")) {
                Some(schemas) => serde_json::to_value(schemas)
                    .map_err(|source| SchemaError::NotJson { path, source })?,
                None => Value::Object(Map::new()),
            };
            let mut schemas = match schemas {
                Value::Object(schemas) => schemas,
                _ => Map::new(),
            };
            for schema in schemas.values_mut() {
                convert(&file, schema, &mut refs);
            }
            definitions.insert(file, json!({ "definitions": schemas }));
        }

        let set = Self {
            dir: dir.to_owned(),
            definitions,
            validators: Mutex::new(HashMap::new()),
        };
        for (file, reference) in refs {
            if set.schema(&reference).is_none() {
                return Err(SchemaError::UnresolvedRef { file, reference });
            }
        }
        Ok(set)
    }

    /// The converted schema `name` (`"TS29571_CommonData.yaml#/components/schemas/Snssai"`).
    pub fn schema(&self, name: &str) -> Option<&Value> {
        let (file, schema) = split_name(name)?;
        self.definitions.get(file)?.get("definitions")?.get(schema)
    }

    /// Checks `value` against the schema `name`; the errors say where and why it does not match.
    pub fn validate(&self, name: &str, value: &Value) -> Result<(), Vec<String>> {
        let validator = self.validator(name).map_err(|error| vec![error])?;
        let errors: Vec<String> = validator
            .iter_errors(value)
            .map(|error| match error.instance_path().as_str() {
                "" => format!("/: {error}"),
                path => format!("{path}: {error}"),
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    fn validator(&self, name: &str) -> Result<Arc<jsonschema::Validator>, String> {
        let mut validators = self
            .validators
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(validator) = validators.get(name) {
            return Ok(Arc::clone(validator));
        }
        if self.schema(name).is_none() {
            return Err(format!("no schema {name} in {}", self.dir.display()));
        }
        let (file, schema) = split_name(name).ok_or_else(|| format!("bad schema name {name}"))?;
        let root = json!({
            "allOf": [{ "$ref": pointer(file, schema) }],
            "definitions": self.closure(file, schema),
        });
        let validator = jsonschema::draft4::options()
            .should_validate_formats(true)
            .build(&root)
            .map_err(|error| format!("schema {name} does not compile: {error}"))?;
        let validator = Arc::new(validator);
        validators.insert(name.to_owned(), Arc::clone(&validator));
        Ok(validator)
    }
}

impl SchemaSet {
    /// The definitions that schema `name` of `file` needs: itself and all it refers to,
    /// directly or not. (Only these are compiled: some unrelated 3GPP schemas do not compile,
    /// e.g. `targetAmfSet` in TS 29.531 has the pattern `[0-9]{2-3}`.)
    fn closure(&self, file: &str, name: &str) -> Map<String, Value> {
        let mut closure: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
        let mut pending = vec![(file.to_owned(), name.to_owned())];
        while let Some((file, name)) = pending.pop() {
            let Some(schema) = self.schema(&format!("{file}#{SCHEMAS_POINTER}{name}")) else {
                continue;
            };
            let definitions = closure.entry(file).or_default();
            if !definitions.contains_key(&name) {
                definitions.insert(name, schema.clone());
                collect_refs(schema, &mut pending);
            }
        }
        closure
            .into_iter()
            .map(|(file, definitions)| (file, json!({ "definitions": definitions })))
            .collect()
    }
}

/// Pushes the `(file, name)` of every converted `$ref` in `schema`.
fn collect_refs(schema: &Value, refs: &mut Vec<(String, String)>) {
    match schema {
        Value::Object(object) => {
            for (key, value) in object {
                match (key.as_str(), value) {
                    ("$ref", Value::String(reference)) => refs.extend(
                        reference
                            .strip_prefix("#/definitions/")
                            .and_then(|rest| rest.split_once("/definitions/"))
                            .map(|(file, name)| (file.to_owned(), name.to_owned())),
                    ),
                    _ => collect_refs(value, refs),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_refs(item, refs)),
        _ => {}
    }
}

/// Splits `"File.yaml#/components/schemas/Name"` into `("File.yaml", "Name")`.
fn split_name(name: &str) -> Option<(&str, &str)> {
    let (file, pointer) = name.split_once('#')?;
    let schema = pointer.strip_prefix(SCHEMAS_POINTER)?;
    (!schema.contains('/')).then_some((file, schema))
}

/// The pointer to schema `name` of `file` in the combined document.
fn pointer(file: &str, name: &str) -> String {
    format!("#/definitions/{file}/definitions/{name}")
}

/// Rewrites the OpenAPI 3.0 schema of `file` in place into JSON Schema draft 4, recording every
/// `(file, reference)` it rewrites.
fn convert(file: &str, schema: &mut Value, refs: &mut Vec<(String, String)>) {
    let Value::Object(object) = schema else {
        return;
    };
    if let Some(Value::String(reference)) = object.get_mut("$ref") {
        let target = match reference.split_once('#') {
            Some(("", pointer)) => format!("{file}#{pointer}"),
            _ => reference.clone(),
        };
        *reference = match split_name(&target) {
            Some((target_file, name)) => pointer(target_file, name),
            None => target.clone(), // left as it is: `load` reports it as unresolved
        };
        refs.push((file.to_owned(), target));
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(sub) = object.get_mut(key) {
            convert(file, sub, refs);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(subs)) = object.get_mut(key) {
            subs.iter_mut().for_each(|sub| convert(file, sub, refs));
        }
    }
    if let Some(Value::Object(properties)) = object.get_mut("properties") {
        properties
            .values_mut()
            .for_each(|sub| convert(file, sub, refs));
    }
    if object.remove("nullable") == Some(Value::Bool(true)) {
        let inner = Value::Object(std::mem::take(object));
        *schema = json!({ "anyOf": [{ "type": "null" }, inner] });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_refs_and_nullable() {
        let mut schema = json!({
            "type": "object",
            "nullable": true,
            "properties": {
                "a": { "$ref": "#/components/schemas/A" },
                "b": { "type": "array", "items": { "$ref": "Other.yaml#/components/schemas/B" } },
            },
        });
        let mut refs = Vec::new();
        convert("This.yaml", &mut schema, &mut refs);
        assert_eq!(
            schema,
            json!({ "anyOf": [{ "type": "null" }, {
                "type": "object",
                "properties": {
                    "a": { "$ref": "#/definitions/This.yaml/definitions/A" },
                    "b": { "type": "array", "items": {
                        "$ref": "#/definitions/Other.yaml/definitions/B"
                    } },
                },
            }] })
        );
        assert_eq!(
            refs,
            [
                ("This.yaml".into(), "This.yaml#/components/schemas/A".into()),
                (
                    "This.yaml".into(),
                    "Other.yaml#/components/schemas/B".into()
                ),
            ]
        );
    }

    #[test]
    fn missing_dir_is_an_error() {
        let error = SchemaSet::load("/nonexistent/3gpp").expect_err("must fail");
        assert!(error.to_string().contains(DIR_ENV), "{error}");
    }
}

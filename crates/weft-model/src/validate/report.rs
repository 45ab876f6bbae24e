//! The report every check writes to.

use crate::yaml::Document;
use crate::ConfigError;

/// Where errors go: each names its file, line, resource and field.
pub(crate) struct Report<'a> {
    file: &'a str,
    errors: &'a mut Vec<ConfigError>,
}

impl Report<'_> {
    pub(crate) fn new<'a>(file: &'a str, errors: &'a mut Vec<ConfigError>) -> Report<'a> {
        Report { file, errors }
    }

    pub(crate) fn at(
        &mut self,
        doc: &Document,
        kind: &str,
        name: &str,
        field: String,
        message: String,
    ) {
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line: doc.lines.line_of(&field).or(Some(doc.start_line)),
            field: format!("{kind}/{name}: {field}"),
            message,
        });
    }
}

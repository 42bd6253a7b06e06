//! The protobuf descriptors that turn the model's Envoy JSON into the bytes xDS carries.
//!
//! `xds-api` ships the descriptors of Envoy's core API but not of every extension the model
//! uses: the Wasm filter, the upstream codec filter (last of the router's upstream filters),
//! `upstreams.http.v3.HttpProtocolOptions`, the TLS inspector, `UpstreamTlsContext`,
//! `DownstreamTlsContext` and their `CommonTlsContext` are missing. They are declared here
//! with Envoy's own names and field numbers (from Envoy's API protos), restricted to the
//! fields the model writes: a field the model starts writing without adding it here fails
//! the translation with a message naming it, never silently.

use prost::Message;
use prost_reflect::DescriptorPool;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{
    DescriptorProto, EnumDescriptorProto, EnumValueDescriptorProto, FieldDescriptorProto,
    FileDescriptorProto, FileDescriptorSet, MessageOptions,
};

fn field(name: &str, number: i32, ty: Type, type_name: Option<&str>) -> FieldDescriptorProto {
    FieldDescriptorProto {
        name: Some(name.to_owned()),
        number: Some(number),
        label: Some(Label::Optional as i32),
        r#type: Some(ty as i32),
        type_name: type_name.map(str::to_owned),
        ..FieldDescriptorProto::default()
    }
}

fn message(name: &str, fields: Vec<FieldDescriptorProto>) -> DescriptorProto {
    DescriptorProto {
        name: Some(name.to_owned()),
        field: fields,
        ..DescriptorProto::default()
    }
}

fn repeated(mut field: FieldDescriptorProto) -> FieldDescriptorProto {
    field.label = Some(Label::Repeated as i32);
    field
}

fn file(
    name: &str,
    package: &str,
    dependencies: &[&str],
    messages: Vec<DescriptorProto>,
) -> FileDescriptorProto {
    FileDescriptorProto {
        name: Some(name.to_owned()),
        package: Some(package.to_owned()),
        dependency: dependencies.iter().map(|d| (*d).to_owned()).collect(),
        message_type: messages,
        syntax: Some("proto3".to_owned()),
        ..FileDescriptorProto::default()
    }
}

fn wasm() -> FileDescriptorProto {
    const WASM_V3: &str = "envoy/extensions/wasm/v3/wasm.proto";
    let message_type = |name: &str| Some(format!(".envoy.extensions.wasm.v3.{name}"));
    let mut environment_variables = message(
        "EnvironmentVariables",
        vec![
            repeated(field("host_env_keys", 1, Type::String, None)),
            repeated(field(
                "key_values",
                2,
                Type::Message,
                message_type("EnvironmentVariables.KeyValuesEntry").as_deref(),
            )),
        ],
    );
    let mut entry = message(
        "KeyValuesEntry",
        vec![
            field("key", 1, Type::String, None),
            field("value", 2, Type::String, None),
        ],
    );
    entry.options = Some(MessageOptions {
        map_entry: Some(true),
        ..MessageOptions::default()
    });
    environment_variables.nested_type.push(entry);
    let vm_config = message(
        "VmConfig",
        vec![
            field("vm_id", 1, Type::String, None),
            field("runtime", 2, Type::String, None),
            field(
                "code",
                3,
                Type::Message,
                Some(".envoy.config.core.v3.AsyncDataSource"),
            ),
            field(
                "configuration",
                4,
                Type::Message,
                Some(".google.protobuf.Any"),
            ),
            field("allow_precompiled", 5, Type::Bool, None),
            field("nack_on_code_cache_miss", 6, Type::Bool, None),
            field(
                "environment_variables",
                7,
                Type::Message,
                message_type("EnvironmentVariables").as_deref(),
            ),
        ],
    );
    let plugin_config = message(
        "PluginConfig",
        vec![
            field("name", 1, Type::String, None),
            field("root_id", 2, Type::String, None),
            field(
                "vm_config",
                3,
                Type::Message,
                message_type("VmConfig").as_deref(),
            ),
            field(
                "configuration",
                4,
                Type::Message,
                Some(".google.protobuf.Any"),
            ),
            field(
                "failure_policy",
                7,
                Type::Enum,
                message_type("FailurePolicy").as_deref(),
            ),
            field(
                "allow_on_headers_stop_iteration",
                9,
                Type::Message,
                Some(".google.protobuf.BoolValue"),
            ),
        ],
    );
    let mut wasm = file(
        WASM_V3,
        "envoy.extensions.wasm.v3",
        &[
            "envoy/config/core/v3/base.proto",
            "google/protobuf/any.proto",
            "google/protobuf/wrappers.proto",
        ],
        vec![environment_variables, vm_config, plugin_config],
    );
    let values = ["UNSPECIFIED", "FAIL_RELOAD", "FAIL_CLOSED", "FAIL_OPEN"];
    wasm.enum_type.push(EnumDescriptorProto {
        name: Some("FailurePolicy".to_owned()),
        value: values
            .iter()
            .zip(0..)
            .map(|(name, number)| EnumValueDescriptorProto {
                name: Some((*name).to_owned()),
                number: Some(number),
                options: None,
            })
            .collect(),
        ..EnumDescriptorProto::default()
    });
    wasm
}

fn wasm_filter() -> FileDescriptorProto {
    file(
        "envoy/extensions/filters/http/wasm/v3/wasm.proto",
        "envoy.extensions.filters.http.wasm.v3",
        &["envoy/extensions/wasm/v3/wasm.proto"],
        vec![message(
            "Wasm",
            vec![field(
                "config",
                1,
                Type::Message,
                Some(".envoy.extensions.wasm.v3.PluginConfig"),
            )],
        )],
    )
}

/// The terminal filter of the router's `upstream_http_filters` (no fields).
fn upstream_codec() -> FileDescriptorProto {
    file(
        "envoy/extensions/filters/http/upstream_codec/v3/upstream_codec.proto",
        "envoy.extensions.filters.http.upstream_codec.v3",
        &[],
        vec![message("UpstreamCodec", Vec::new())],
    )
}

fn upstream_http_protocol_options() -> FileDescriptorProto {
    let mut options = message(
        "HttpProtocolOptions",
        vec![field(
            "explicit_http_config",
            3,
            Type::Message,
            Some(".envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig"),
        )],
    );
    options.nested_type.push(message(
        "ExplicitHttpConfig",
        vec![
            field(
                "http_protocol_options",
                1,
                Type::Message,
                Some(".envoy.config.core.v3.Http1ProtocolOptions"),
            ),
            field(
                "http2_protocol_options",
                2,
                Type::Message,
                Some(".envoy.config.core.v3.Http2ProtocolOptions"),
            ),
        ],
    ));
    file(
        "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
        "envoy.extensions.upstreams.http.v3",
        &["envoy/config/core/v3/protocol.proto"],
        vec![options],
    )
}

/// The TLS contexts of `tls.proto`, which `xds-api` lacks: the upstream one of `https`/`grpcs`
/// clusters (SNI, and for `tls_verify` services a validation context) and the downstream one
/// of the TLS listener's filter chains (ALPN, the certificate inline or by SDS). The messages
/// they name (`CertificateValidationContext`, `TlsCertificate`, `SdsSecretConfig`) are in
/// `xds-api`, from Envoy's `common.proto` and `secret.proto`.
fn tls_contexts() -> FileDescriptorProto {
    let message_type =
        |name: &str| Some(format!(".envoy.extensions.transport_sockets.tls.v3.{name}"));
    let common = message(
        "CommonTlsContext",
        vec![
            repeated(field(
                "tls_certificates",
                2,
                Type::Message,
                message_type("TlsCertificate").as_deref(),
            )),
            field(
                "validation_context",
                3,
                Type::Message,
                message_type("CertificateValidationContext").as_deref(),
            ),
            repeated(field("alpn_protocols", 4, Type::String, None)),
            repeated(field(
                "tls_certificate_sds_secret_configs",
                6,
                Type::Message,
                message_type("SdsSecretConfig").as_deref(),
            )),
        ],
    );
    let common_field = || {
        field(
            "common_tls_context",
            1,
            Type::Message,
            message_type("CommonTlsContext").as_deref(),
        )
    };
    let upstream = message(
        "UpstreamTlsContext",
        vec![common_field(), field("sni", 2, Type::String, None)],
    );
    let downstream = message("DownstreamTlsContext", vec![common_field()]);
    file(
        "envoy/extensions/transport_sockets/tls/v3/tls.proto",
        "envoy.extensions.transport_sockets.tls.v3",
        &[
            "envoy/extensions/transport_sockets/tls/v3/common.proto",
            "envoy/extensions/transport_sockets/tls/v3/secret.proto",
        ],
        vec![upstream, downstream, common],
    )
}

/// The listener filter that reads a ClientHello's SNI for the filter chain match (no fields).
fn tls_inspector() -> FileDescriptorProto {
    file(
        "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto",
        "envoy.extensions.filters.listener.tls_inspector.v3",
        &[],
        vec![message("TlsInspector", Vec::new())],
    )
}

const ANY_SHAPE_FILE: &str = "wasmgate/xds/any_shape.proto";

/// `google.protobuf.Any`'s fields without its JSON rules.
fn any_shape() -> FileDescriptorProto {
    file(
        ANY_SHAPE_FILE,
        "wasmgate.xds",
        &[],
        vec![message(
            "AnyShape",
            vec![
                field("type_url", 1, Type::String, None),
                field("value", 2, Type::Bytes, None),
            ],
        )],
    )
}

/// Gives `envoy.config.route.v3.FilterConfig.config` [`any_shape`]'s type. The model enables
/// a filter on a route with `{"@type": ".../FilterConfig", "config": {}}`: an `Any` without a
/// type URL, which proto3 JSON allows and Envoy takes as "enabled, no per-route config", but
/// which prost-reflect refuses (its `Any` needs `@type`). Same field number and wire shape, so
/// the bytes are Envoy's; the model writes no other `config` there.
fn any_shaped_filter_config(set: &mut FileDescriptorSet) -> Result<(), String> {
    let route_components = set
        .file
        .iter_mut()
        .find(|f| f.name() == "envoy/config/route/v3/route_components.proto")
        .ok_or("xds-api has no envoy/config/route/v3/route_components.proto")?;
    let config = route_components
        .message_type
        .iter_mut()
        .find(|m| m.name() == "FilterConfig")
        .and_then(|m| m.field.iter_mut().find(|f| f.name() == "config"))
        .ok_or("xds-api's envoy.config.route.v3.FilterConfig has no field config")?;
    config.type_name = Some(".wasmgate.xds.AnyShape".to_owned());
    route_components.dependency.push(ANY_SHAPE_FILE.to_owned());
    set.file.insert(0, any_shape());
    Ok(())
}

/// Envoy's API as far as the model uses it.
pub fn pool() -> Result<DescriptorPool, String> {
    let mut set = FileDescriptorSet::decode(xds_api::FILE_DESCRIPTOR_SET)
        .map_err(|e| format!("xds-api descriptors: {e}"))?;
    any_shaped_filter_config(&mut set)?;
    let mut pool = DescriptorPool::from_file_descriptor_set(set)
        .map_err(|e| format!("xds-api descriptors: {e}"))?;
    pool.add_file_descriptor_protos([
        wasm(),
        wasm_filter(),
        upstream_codec(),
        upstream_http_protocol_options(),
        tls_contexts(),
        tls_inspector(),
    ])
    .map_err(|e| format!("Envoy extension descriptors: {e}"))?;
    Ok(pool)
}

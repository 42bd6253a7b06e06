// A third-party-style filter on the AssemblyScript SDK (@solo-io/proxy-runtime, ABI 0.2.0),
// tested by modtest with its own case file (cases.yaml) in the host, gateway and Envoy.
//
// Its configuration is plain text, not JSON: the name of a request header that blocks a
// request. A request carrying it is answered 403 by the filter; any other goes upstream with
// `x-as-guard: <root id>` added, and its answer gets `x-as-guard-saw` with the request's
// `x-who`. A configuration that is not a lower-case header name is refused. (An empty one
// traps in the SDK's own onConfigure, which reads a 0-byte buffer: cases.yaml says so.)
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext,
  Context,
  registerRootContext,
  FilterHeadersStatusValues,
  stream_context,
  send_local_response,
  GrpcStatusValues,
  log,
  LogLevelValues,
} from "@solo-io/proxy-runtime";
import { get_property } from "@solo-io/proxy-runtime/runtime";

class GuardRoot extends RootContext {
  onConfigure(configuration_size: u32): bool {
    super.onConfigure(configuration_size);
    const name = this.getConfiguration();
    for (let i = 0; i < name.length; i++) {
      const c = name.charCodeAt(i);
      const ok = (c >= 97 && c <= 122) || (c >= 48 && c <= 57) || c == 45;
      if (!ok) {
        log(LogLevelValues.critical, "as-header-guard: configuration refused: not a lower-case header name: " + name);
        return false;
      }
    }
    return true;
  }

  createContext(context_id: u32): Context {
    return new Guard(context_id, this);
  }
}

class Guard extends Context {
  who: string = "";

  constructor(context_id: u32, root_context: GuardRoot) {
    super(context_id, root_context);
  }

  onRequestHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const blocking = this.root_context.getConfiguration();
    if (stream_context.headers.request.get(blocking) != "") {
      send_local_response(403, "as-header-guard", String.UTF8.encode("blocked by as-header-guard\n"), [], GrpcStatusValues.Ok);
      return FilterHeadersStatusValues.StopIteration;
    }
    this.who = stream_context.headers.request.get("x-who");
    const root_id = String.UTF8.decode(get_property("plugin_root_id"));
    stream_context.headers.request.add("x-as-guard", root_id);
    return FilterHeadersStatusValues.Continue;
  }

  onResponseHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    if (this.who != "") {
      stream_context.headers.response.add("x-as-guard-saw", this.who);
    }
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => {
  return new GuardRoot(context_id);
}, "as_guard");

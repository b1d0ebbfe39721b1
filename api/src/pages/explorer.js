// Starts GraphiQL against this server: queries and mutations over HTTP, subscriptions over
// WebSocket (graphql-transport-ws). Every file it needs is served by the server itself.
(function () {
  "use strict";
  var origin = window.location.origin;
  var wsOrigin = origin.replace(/^http/, "ws");

  // The headers typed into GraphiQL's header editor (e.g. {"Authorization": "Bearer …"}) are
  // sent with HTTP requests by GraphiQL; WebSocket subscriptions send them in connection_init.
  function editorHeaders() {
    try {
      var stored = window.localStorage.getItem("graphiql:headers");
      var parsed = stored ? JSON.parse(stored) : {};
      return parsed && typeof parsed === "object" ? parsed : {};
    } catch (e) {
      return {};
    }
  }

  var fetcher = GraphiQL.createFetcher({
    url: origin + "/graphql",
    wsClient: graphqlWs.createClient({
      url: wsOrigin + "/graphql",
      lazy: true,
      connectionParams: editorHeaders,
    }),
  });

  var defaultQuery = [
    "# Welcome to Fleetledger. Press the run button (or Ctrl-Enter) to send a query.",
    "# Log in with the `login` mutation and put the token in the Headers tab as",
    '#   {"Authorization": "Bearer <token>"}',
    "# The API guide is at /docs/api.md.",
    "",
    "{",
    "  branches {",
    "    code",
    "    name",
    "    city",
    "  }",
    "}",
    "",
  ].join("\n");

  var root = ReactDOM.createRoot(document.getElementById("graphiql"));
  root.render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultQuery: defaultQuery,
      defaultEditorToolsVisibility: true,
      isHeadersEditorEnabled: true,
      shouldPersistHeaders: true,
    })
  );
})();

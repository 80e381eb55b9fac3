// Starts Swagger UI on the page /docs serves. It is a file, not an inline script, so that
// page's Content-Security-Policy can say `script-src 'self'`. The page names the OpenAPI
// document in a data attribute. The options are the ones FastAPI's own docs page passes,
// plus `validatorUrl: null`: without it Swagger UI sends the document to a public validator.
(function () {
  "use strict";
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.getAttribute("data-openapi-url"),
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  });
})();

// Swagger UI from the bundled assets (no CDN), reading the gateway's own OpenAPI document.
window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true });

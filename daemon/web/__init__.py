"""The history page (`lipsyncd web`): Flask app, served by gunicorn; see DESIGN.md "Web"."""

"""The demo page: a trained model in the browser (`cyclegan-demo`, and the `app.py` of an exported
Hugging Face folder, which runs as a Space). `model` says what a checkpoint offers, `work`
translates what a visitor uploads, `page` lays out the Gradio app and serves it (`serve`); Gradio
is imported by `page` alone, so the rest runs without it."""

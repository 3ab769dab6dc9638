"""Serving: the REST API (FastAPI + uvicorn) and the Streamlit demo, over the Predictor."""

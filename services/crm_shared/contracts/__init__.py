"""The event contract: what other company systems need to publish to the platform.

Light on purpose (pydantic, kafka-python, pyyaml): `pip install crm-shared` gives the models, the
topic catalogue and the SDK without the platform's runtime.
"""

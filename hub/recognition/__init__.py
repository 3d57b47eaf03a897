"""Mutual recognition of test results (检查检验结果互认, 国卫医发〔2022〕6号; design/RECOGNITION.md).

- :mod:`hub.recognition.reference` — the reference data a region publishes (catalogue, scopes,
  qualified performers, local code maps), parsed from CSV/JSON into an immutable snapshot;
- :mod:`hub.recognition.rules` — the pure decision engine, rules R1–R8 in order;
- :mod:`hub.recognition.results` — reading a candidate out of Observation / DiagnosticReport /
  ImagingStudy JSON;
- :mod:`hub.recognition.store` — versioned reference data in the database (effective dates);
- :mod:`hub.recognition.marks` — the HR mark (``meta.tag``) and expiry on stored results;
- :mod:`hub.recognition.params` — operation parameters;
- :mod:`hub.recognition.recognizable` — ``$recognizable``;
- :mod:`hub.recognition.decision` — ``$recognition-decision``, the physician's decision (R9);
- :mod:`hub.recognition.offers` — the offer log for the statistics;
- :mod:`hub.recognition.stats` — offered / accepted / rejected figures;
- :mod:`hub.recognition.api` — the reference-data and statistics HTTP routes;
- :mod:`hub.recognition.service` — wiring into the :class:`hub.api.app.Hub`.

The hub advises; it never blocks an order.
"""

#: the kinds of reference data, each published and versioned on its own (hub.recognition.reference)
KINDS = ("catalogue", "scopes", "qualifications", "codemaps")

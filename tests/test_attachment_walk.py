"""The typed Attachment walk finds every Attachment by element type, and nothing else."""

from __future__ import annotations

from typing import Any

from fhirvault.fhir.attachments import attachment_objects, iter_attachments


def att(n: int) -> dict[str, Any]:
    return {"contentType": "image/png", "url": f"Binary/b{n}"}


def found(resource: dict[str, Any]) -> dict[str, str]:
    with_paths = {path: a["url"] for path, a in iter_attachments(resource)}
    # The path-less walk finds the very same objects.
    assert [id(a) for a in attachment_objects(resource)] == [id(a) for _, a in iter_attachments(resource)]
    return with_paths


def test_patient_photo_with_indexes() -> None:
    p = {"resourceType": "Patient", "photo": [att(1), att(2)], "name": [{"family": "X"}]}
    assert found(p) == {"Patient.photo[0]": "Binary/b1", "Patient.photo[1]": "Binary/b2"}


def test_communication_payload_content_attachment() -> None:
    c = {"resourceType": "Communication", "status": "completed",
         "payload": [{"contentString": "hi"}, {"contentAttachment": att(1)},
                     {"contentReference": {"reference": "Binary/b9"}}]}
    assert found(c) == {"Communication.payload[1].contentAttachment": "Binary/b1"}


def test_document_reference_content_attachment() -> None:
    d = {"resourceType": "DocumentReference", "status": "current",
         "content": [{"attachment": att(1)}, {"attachment": att(2), "format": {"code": "x"}}]}
    assert found(d) == {"DocumentReference.content[0].attachment": "Binary/b1",
                        "DocumentReference.content[1].attachment": "Binary/b2"}


def test_media_content() -> None:
    assert found({"resourceType": "Media", "status": "completed", "content": att(1)}) == {
        "Media.content": "Binary/b1"}


def test_observation_value_attachment_and_component() -> None:
    o = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueAttachment": att(1),
         "component": [{"code": {"text": "y"}, "valueAttachment": att(2)}, {"valueQuantity": {"value": 1}}]}
    assert found(o) == {"Observation.valueAttachment": "Binary/b1",
                        "Observation.component[0].valueAttachment": "Binary/b2"}


def test_extensions_at_any_depth() -> None:
    p = {"resourceType": "Patient",
         "extension": [{"url": "http://x/a", "valueAttachment": att(1)}],
         "modifierExtension": [{"url": "http://x/m", "extension": [
             {"url": "inner", "extension": [{"url": "deeper", "valueAttachment": att(2)}]}]}],
         "name": [{"family": "X", "extension": [{"url": "http://x/n", "valueAttachment": att(3)}]}],
         "_birthDate": {"extension": [{"url": "http://x/b", "valueAttachment": att(4)}]},
         "contact": [{"modifierExtension": [{"url": "http://x/c", "valueAttachment": att(5)}]}]}
    assert found(p) == {
        "Patient.extension[0].valueAttachment": "Binary/b1",
        "Patient.modifierExtension[0].extension[0].extension[0].valueAttachment": "Binary/b2",
        "Patient.name[0].extension[0].valueAttachment": "Binary/b3",
        "Patient.birthDate.extension[0].valueAttachment": "Binary/b4",
        "Patient.contact[0].modifierExtension[0].valueAttachment": "Binary/b5",
    }


def test_questionnaire_response_nested_items_and_answers() -> None:
    q = {"resourceType": "QuestionnaireResponse", "status": "completed", "item": [
        {"linkId": "1", "answer": [{"valueAttachment": att(1)}]},
        {"linkId": "2", "item": [
            {"linkId": "2.1", "answer": [
                {"valueString": "s", "item": [{"linkId": "2.1.1", "answer": [{"valueAttachment": att(2)}]}]}]},
        ]},
    ]}
    assert found(q) == {
        "QuestionnaireResponse.item[0].answer[0].valueAttachment": "Binary/b1",
        "QuestionnaireResponse.item[1].item[0].answer[0].item[0].answer[0].valueAttachment": "Binary/b2",
    }


def test_contained_resources_and_bundles() -> None:
    p = {"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "x"},
         "presentedForm": [att(1)],
         "contained": [{"resourceType": "Media", "id": "m", "status": "completed", "content": att(2)}]}
    assert found(p) == {"DiagnosticReport.presentedForm[0]": "Binary/b1",
                        "DiagnosticReport.contained[0].content": "Binary/b2"}
    b = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": p}]}
    assert set(found(b)) == {"Bundle.entry[0].resource.presentedForm[0]",
                             "Bundle.entry[0].resource.contained[0].content"}


def test_url_keys_outside_attachments_are_not_touched() -> None:
    p = {"resourceType": "Patient",
         "extension": [{"url": "Binary/not-an-attachment", "valueString": "x"}],
         "telecom": [{"system": "url", "value": "Binary/x"}],
         "meta": {"source": "Binary/y", "profile": ["http://p"]}}
    assert found(p) == {}
    src = {"resourceType": "Endpoint", "status": "active", "address": "Binary/z",
           "connectionType": {"code": "x"}, "payloadType": [{"text": "x"}]}
    assert found(src) == {}
    # A RelatedArtifact's document is an Attachment; its own `url` is not.
    plan = {"resourceType": "PlanDefinition", "status": "draft",
            "relatedArtifact": [{"type": "documentation", "url": "http://a", "document": att(1)}]}
    assert found(plan) == {"PlanDefinition.relatedArtifact[0].document": "Binary/b1"}


def test_attachments_are_the_objects_in_the_resource() -> None:
    d = {"resourceType": "DocumentReference", "status": "current", "content": [{"attachment": att(1)}]}
    for _path, a in iter_attachments(d):
        a["url"] = "Binary/changed"
    assert d["content"][0]["attachment"]["url"] == "Binary/changed"


def test_unknown_and_malformed_input_is_skipped() -> None:
    assert found({"resourceType": "Patient", "photo": "not-an-object", "unknownThing": {"url": "x"}}) == {}
    assert found({"no": "type"}) == {}


def test_attachments_in_document_order() -> None:
    doc = {"resourceType": "DocumentReference", "status": "current",
           "content": [{"attachment": {"url": "a"}}, {"attachment": {"url": "b"}}],
           "contained": [{"resourceType": "Media", "content": {"url": "c"}}],
           "extension": [{"url": "x", "valueAttachment": {"url": "d"}}],
           "relatesTo": [{"code": "replaces", "target": {"reference": "DocumentReference/1"}}]}
    assert [(p, a["url"]) for p, a in iter_attachments(doc)] == [
        ("DocumentReference.content[0].attachment", "a"), ("DocumentReference.content[1].attachment", "b"),
        ("DocumentReference.contained[0].content", "c"), ("DocumentReference.extension[0].valueAttachment", "d")]


def test_nested_answers_parameter_parts_and_inner_resources() -> None:
    qr = {"resourceType": "QuestionnaireResponse", "item": [{"answer": [
        {"valueAttachment": {"url": "e"}, "item": [{"answer": [{"valueAttachment": {"url": "f"}}]}]}]}]}
    assert [p for p, _ in iter_attachments(qr)] == [
        "QuestionnaireResponse.item[0].answer[0].valueAttachment",
        "QuestionnaireResponse.item[0].answer[0].item[0].answer[0].valueAttachment"]
    params = {"resourceType": "Parameters", "parameter": [
        {"name": "a", "part": [{"name": "b", "valueAttachment": {"url": "g"}}]},
        {"name": "r", "resource": {"resourceType": "Patient", "photo": [{"url": "h"}]}}]}
    assert [p for p, _ in iter_attachments(params)] == [
        "Parameters.parameter[0].part[0].valueAttachment", "Parameters.parameter[1].resource.photo[0]"]

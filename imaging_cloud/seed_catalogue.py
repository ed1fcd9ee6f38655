# ruff: noqa: RUF001 - Chinese text uses full-width punctuation
"""The fixed material of `imaging_cloud.seed_region`: a city's hospitals, its exam mix, names,
report texts and the reasons doctors give for declining a prior exam.

Everything is invented for synthetic data (the hospitals are not real institutions; the
coordinates are places in central Chongqing, 29.56 N 106.55 E, so the map looks like a city).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import (
    CTImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalXRayImageStorageForPresentation,
    MRImageStorage,
    PositronEmissionTomographyImageStorage,
    UltrasoundImageStorage,
)


@dataclass(frozen=True)
class HospitalSeed:
    hospital_id: str
    name: str
    district: str
    level: str
    latitude: float
    longitude: float
    local_prefix: str  # how this hospital's HIS spells its own procedure codes


# Ordered so that any first N spans several districts and levels (5 → 4 districts).
HOSPITALS = (
    HospitalSeed("CQ-YZ-01", "渝中区中心医院 Yuzhong Central Hospital", "渝中区", "三级甲等",
                 29.5569, 106.5732, "YZC"),
    HospitalSeed("CQ-JB-01", "江北区人民医院 Jiangbei People's Hospital", "江北区", "三级乙等",
                 29.5757, 106.5321, "JBR"),
    HospitalSeed("CQ-SPB-01", "沙坪坝区第一医院 Shapingba No.1 Hospital", "沙坪坝区", "三级甲等",
                 29.5413, 106.4566, "SP1"),
    HospitalSeed("CQ-NA-01", "南岸区人民医院 Nan'an People's Hospital", "南岸区", "二级甲等",
                 29.5236, 106.5648, "NAR"),
    HospitalSeed("CQ-YZ-02", "渝中区中医院 Yuzhong TCM Hospital", "渝中区", "二级甲等",
                 29.5528, 106.5468, "YZT"),
    HospitalSeed("CQ-JB-02", "江北区妇幼保健院 Jiangbei Maternal and Child Hospital", "江北区",
                 "二级乙等", 29.5886, 106.5514, "JBF"),
    HospitalSeed("CQ-SPB-02", "沙坪坝区第二人民医院 Shapingba No.2 People's Hospital",
                 "沙坪坝区", "二级乙等", 29.5661, 106.4312, "SP2"),
    HospitalSeed("CQ-NA-02", "南岸区第二医院 Nan'an No.2 Hospital", "南岸区", "三级乙等",
                 29.5012, 106.6003, "NA2"),
    HospitalSeed("CQ-JLP-01", "九龙坡区人民医院 Jiulongpo People's Hospital", "九龙坡区",
                 "三级乙等", 29.5048, 106.5106, "JLR"),
    HospitalSeed("CQ-JLP-02", "九龙坡区中医院 Jiulongpo TCM Hospital", "九龙坡区", "二级甲等",
                 29.4806, 106.4729, "JLT"),
)  # fmt: skip

# How much of the region's imaging each level does (a 三甲 hospital sees ~5x a 二乙 one).
LEVEL_WEIGHT = {"三级甲等": 5.0, "三级乙等": 3.5, "二级甲等": 2.0, "二级乙等": 1.0}

# District → the resident-ID region code its patients' IDs start with.
DISTRICT_CODE = {"渝中区": "500103", "江北区": "500105", "沙坪坝区": "500106",
                 "九龙坡区": "500107", "南岸区": "500108"}  # fmt: skip


@dataclass(frozen=True)
class ExamSeed:
    regional_code: str
    modality: str
    body_part: str  # DICOM Body Part Examined
    name: str  # 检查名称, as the study description
    exam_class: str  # what counts as "the same exam" for mutual recognition
    recognition_days: int  # 0: never recognised
    weight: float  # share of the region's exams
    images: tuple[int, int]  # instances per study, min and max (kept small on purpose)
    sop_class_uid: str
    department: str


# The codes, classes and windows of config/exam_codes.toml (the regional table), so seeded
# studies are what the recognition service and the exam-code admin API expect.
EXAMS = (
    ExamSeed("DR-CHEST-PA", "DX", "CHEST", "胸部正位片 DR chest PA", "XR-CHEST", 30, 20, (1, 2),
             DigitalXRayImageStorageForPresentation, "放射科 Radiology"),
    ExamSeed("DR-LSPINE", "DX", "LSPINE", "腰椎正侧位片 DR lumbar spine", "XR-LSPINE", 60, 5,
             (2, 2), DigitalXRayImageStorageForPresentation, "放射科 Radiology"),
    ExamSeed("CT-HEAD-PLAIN", "CT", "HEAD", "头颅CT平扫 CT head plain", "CT-HEAD", 30, 10, (3, 6),
             CTImageStorage, "放射科 Radiology"),
    ExamSeed("CT-CHEST-PLAIN", "CT", "CHEST", "胸部CT平扫 CT chest plain", "CT-CHEST", 60, 15,
             (3, 6), CTImageStorage, "放射科 Radiology"),
    ExamSeed("CT-CHEST-CE", "CT", "CHEST", "胸部CT增强 CT chest enhanced", "CT-CHEST-CE", 30, 3,
             (4, 6), CTImageStorage, "放射科 Radiology"),
    ExamSeed("CT-ABD-PLAIN", "CT", "ABDOMEN", "上腹部CT平扫 CT abdomen plain", "CT-ABDOMEN", 30, 5,
             (3, 6), CTImageStorage, "放射科 Radiology"),
    ExamSeed("MR-BRAIN-PLAIN", "MR", "HEAD", "头颅MRI平扫 MR brain plain", "MR-HEAD", 60, 6, (3, 6),
             MRImageStorage, "放射科 Radiology"),
    ExamSeed("MR-LSPINE", "MR", "LSPINE", "腰椎MRI平扫 MR lumbar spine", "MR-LSPINE", 90, 4,
             (4, 6), MRImageStorage, "放射科 Radiology"),
    ExamSeed("MR-KNEE", "MR", "KNEE", "膝关节MRI平扫 MR knee", "MR-KNEE", 90, 2, (3, 5),
             MRImageStorage, "放射科 Radiology"),
    ExamSeed("US-ABD", "US", "ABDOMEN", "腹部超声 US abdomen", "US-ABDOMEN", 7, 8, (1, 3),
             UltrasoundImageStorage, "超声科 Ultrasound"),
    ExamSeed("US-THYROID", "US", "THYROID", "甲状腺超声 US thyroid", "US-THYROID", 30, 4, (2, 3),
             UltrasoundImageStorage, "超声科 Ultrasound"),
    ExamSeed("MG-BILATERAL", "MG", "BREAST", "双乳钼靶 Mammography bilateral", "MG-BREAST", 180, 3,
             (4, 4), DigitalMammographyXRayImageStorageForPresentation, "放射科 Radiology"),
    ExamSeed("PET-CT-FDG", "PT", "WHOLEBODY", "PET/CT全身显像 PET/CT whole body",
             "PET-WHOLEBODY", 0, 1, (4, 6), PositronEmissionTomographyImageStorage,
             "核医学科 Nuclear medicine"),
)  # fmt: skip

# Codes some hospitals use that the regional table does not know yet (reported as unmapped).
UNMAPPED = (
    ("CTA-COR", "冠脉CTA CT coronary angiography", "CT", "HEART", (4, 6), CTImageStorage),
    ("US-ECHO", "心脏彩超 Echocardiography", "US", "HEART", (1, 3), UltrasoundImageStorage),
)

SURNAMES = (
    ("王", "Wang"), ("李", "Li"), ("张", "Zhang"), ("刘", "Liu"), ("陈", "Chen"),
    ("杨", "Yang"), ("黄", "Huang"), ("赵", "Zhao"), ("周", "Zhou"), ("吴", "Wu"),
    ("徐", "Xu"), ("孙", "Sun"), ("胡", "Hu"), ("朱", "Zhu"), ("高", "Gao"),
    ("何", "He"), ("罗", "Luo"), ("郑", "Zheng"), ("谢", "Xie"), ("唐", "Tang"),
)  # fmt: skip
GIVEN_NAMES = (
    ("伟", "Wei"), ("芳", "Fang"), ("娜", "Na"), ("秀英", "XiuYing"), ("敏", "Min"),
    ("静", "Jing"), ("丽", "Li"), ("强", "Qiang"), ("磊", "Lei"), ("军", "Jun"),
    ("洋", "Yang"), ("勇", "Yong"), ("艳", "Yan"), ("杰", "Jie"), ("娟", "Juan"),
    ("涛", "Tao"), ("明", "Ming"), ("超", "Chao"), ("秀兰", "XiuLan"), ("霞", "Xia"),
    ("平", "Ping"), ("刚", "Gang"), ("桂英", "GuiYing"), ("建华", "JianHua"),
    ("志强", "ZhiQiang"), ("雪梅", "XueMei"), ("小红", "XiaoHong"), ("德明", "DeMing"),
)  # fmt: skip
PHYSICIANS = ("陈建国", "刘晓燕", "黄志明", "周丽华", "吴海涛", "郑雪", "孙立新", "马俊",
              "林红", "何平")  # fmt: skip

# Findings and impression per exam class: (影像表现, 诊断意见), a normal and an abnormal one.
REPORT_TEXTS: dict[str, tuple[tuple[str, str], ...]] = {
    "XR-CHEST": (
        ("两肺纹理清晰，未见明显实变影。心影大小形态正常。", "胸部正位片未见明显异常。"),
        ("右下肺野见斑片状模糊影，边界不清。心影不大。", "右下肺炎症可能，建议治疗后复查。"),
    ),
    "CT-CHEST": (
        ("两肺野清晰，未见结节及实变。纵隔未见肿大淋巴结。", "胸部CT平扫未见明显异常。"),
        ("右肺上叶见一磨玻璃结节，直径约6mm，边界清楚。", "右肺上叶磨玻璃结节，建议随访。"),
    ),
    "CT-HEAD": (
        ("脑实质密度均匀，脑室系统大小形态正常，中线居中。", "颅脑CT平扫未见明显异常。"),
        ("左侧基底节区见斑点状低密度影，边界欠清。", "左侧基底节区腔隙性脑梗死。"),
    ),
    "MR-HEAD": (
        ("脑实质信号均匀，未见异常信号灶。脑室系统未见扩大。", "头颅MRI平扫未见明显异常。"),
        ("双侧侧脑室旁见多发点状T2WI高信号。", "双侧侧脑室旁多发缺血灶。"),
    ),
    "MR-LSPINE": (
        ("腰椎序列整齐，椎间盘信号正常，椎管未见狭窄。", "腰椎MRI未见明显异常。"),
        ("L4/5椎间盘向后突出，硬膜囊受压。", "L4/5椎间盘突出。"),
    ),
    "US-ABDOMEN": (
        ("肝脏大小形态正常，实质回声均匀。胆囊壁光滑。", "腹部超声未见明显异常。"),
        ("肝实质回声增强，后方回声衰减。", "脂肪肝（轻度）。"),
    ),
}
DEFAULT_TEXTS = (
    ("检查部位结构清晰，未见明显异常征象。", "未见明显异常。"),
    ("检查部位见局限性异常信号/密度影。", "考虑良性病变，建议随访。"),
)

DECLINE_REASONS = (
    "病情变化，需复查 Condition changed, a new exam is needed",
    "前次检查范围不足 Prior exam did not cover the region",
    "需增强扫描 Contrast study needed",
    "术前评估需最新影像 Pre-operative planning needs current images",
    "前次图像质量不满足诊断 Prior image quality insufficient",
)

QC_GRADES = ("A", "B", "C", "D")  # 甲乙丙丁
QC_GRADE_WEIGHTS = (45, 40, 12, 3)
